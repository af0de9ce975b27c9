//! Limit windows: `"minute"`, `90`, `"90s"`, `"15m"`, `"2h"`, `"1d"`.

use serde_json::Value;

/// A parsed window length in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub seconds: u64,
}

const UNITS: [(u64, &str, &str); 4] = [
    (86_400, "day", "days"),
    (3_600, "hour", "hours"),
    (60, "minute", "minutes"),
    (1, "second", "seconds"),
];

impl Window {
    pub fn parse(value: &Value) -> Result<Window, String> {
        const HINT: &str = "expected \"second\", \"minute\", \"hour\", \"day\", a positive number of seconds, or a string such as \"90s\", \"15m\", \"2h\", \"1d\"";
        let seconds = match value {
            Value::Number(n) => n.as_u64().filter(|&s| s > 0),
            Value::String(s) => match s.as_str() {
                "second" => Some(1),
                "minute" => Some(60),
                "hour" => Some(3_600),
                "day" => Some(86_400),
                text => parse_with_unit(text),
            },
            _ => None,
        };
        match seconds {
            Some(seconds) => Ok(Window { seconds }),
            None => Err(format!("invalid window {value}: {HINT}")),
        }
    }

    /// `"per minute"`, `"per 90 seconds"`, `"per 2 hours"`.
    pub fn describe(&self) -> String {
        for (size, one, many) in UNITS {
            if self.seconds.is_multiple_of(size) {
                let count = self.seconds / size;
                return if count == 1 {
                    format!("per {one}")
                } else {
                    format!("per {count} {many}")
                };
            }
        }
        unreachable!("every window is a whole number of seconds")
    }
}

fn parse_with_unit(text: &str) -> Option<u64> {
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let count: u64 = digits.parse().ok().filter(|&c| c > 0)?;
    let size = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return None,
    };
    count.checked_mul(size)
}

#[cfg(test)]
mod tests {
    use super::Window;
    use serde_json::json;

    fn secs(v: serde_json::Value) -> Result<u64, String> {
        Window::parse(&v).map(|w| w.seconds)
    }

    #[test]
    fn every_accepted_form() {
        assert_eq!(secs(json!("second")), Ok(1));
        assert_eq!(secs(json!("minute")), Ok(60));
        assert_eq!(secs(json!("hour")), Ok(3600));
        assert_eq!(secs(json!("day")), Ok(86400));
        assert_eq!(secs(json!(45)), Ok(45));
        assert_eq!(secs(json!("90s")), Ok(90));
        assert_eq!(secs(json!("15m")), Ok(900));
        assert_eq!(secs(json!("2h")), Ok(7200));
        assert_eq!(secs(json!("1d")), Ok(86400));
    }

    #[test]
    fn rejected_forms() {
        for bad in [
            json!(0),
            json!(-5),
            json!(1.5),
            json!("0s"),
            json!("s"),
            json!("10"),
            json!("10w"),
            json!("1 m"),
            json!("-1m"),
            json!("weekly"),
            json!(null),
            json!("99999999999999999999d"),
        ] {
            let err = secs(bad.clone()).unwrap_err();
            assert!(err.starts_with("invalid window"), "{bad}: {err}");
        }
    }

    #[test]
    fn descriptions_use_the_largest_whole_unit() {
        let d = |s| Window { seconds: s }.describe();
        assert_eq!(d(1), "per second");
        assert_eq!(d(60), "per minute");
        assert_eq!(d(90), "per 90 seconds");
        assert_eq!(d(900), "per 15 minutes");
        assert_eq!(d(7200), "per 2 hours");
        assert_eq!(d(172_800), "per 2 days");
    }
}

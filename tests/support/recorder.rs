//! A tracing layer that records every event as text: `field=value ` pairs, the level
//! first.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

/// Records events; clones share the record.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<String>>>);

impl Recorder {
    /// The events recorded so far.
    pub fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Visit(String);
        impl tracing::field::Visit for Visit {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={:?} ", field.name(), value));
            }
        }
        let mut visit = Visit(format!("{} ", event.metadata().level()));
        event.record(&mut visit);
        self.0.lock().unwrap().push(visit.0);
    }
}

// Drives the approvals page in headless Chromium (Debian's /usr/bin/chromium, through
// playwright-core) as an operator would: signs in with Basic auth, reads the pending
// calls, presses the first call's Approve button, and reads the page it lands on. Prints
// one JSON line: {"before": [CARD_TEXT…], "after": PAGE_TEXT, "url": URL_AFTER}.
//
//   node approvals_page.mjs PAGE_URL NAME TOKEN
import { chromium } from "playwright-core";

const [page_url, name, token] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const context = await browser.newContext({ httpCredentials: { username: name, password: token } });
  const page = await context.newPage();
  const response = await page.goto(page_url);
  if (response.status() !== 200) throw new Error(`the page answered ${response.status()}`);
  const before = await page.locator("li").allInnerTexts();
  await page.getByRole("button", { name: "Approve" }).first().click();
  await page.waitForLoadState();
  const after = await page.locator("body").innerText();
  console.log(JSON.stringify({ before, after, url: page.url() }));
} finally {
  await browser.close();
}

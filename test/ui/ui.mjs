// Drives spool's /ui/ page in Debian's headless Chromium and checks that it
// shows what the API says: a completed job in the list, the dead letters by
// error class, and a job's failed records. Run by internal/app's
// TestUIInBrowser, which starts spool and passes what to look for:
//
//   node ui.mjs BASE_URL API_KEY COMPLETED_JOB FAILED_JOB FAILED_ID SCREENSHOT_DIR
import { chromium } from "playwright-core";

const [base, key, completedJob, failedJob, failedID, shots] = process.argv.slice(2);
const seen = {};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));

  await page.goto(base + "/ui/");
  // Auth is on: the page asks for the key once.
  await page.locator("#key-form").waitFor({ state: "visible", timeout: 10000 });
  seen.asked_for_key = true;
  await page.fill("#key", key);
  await page.click("#key-form button");

  const row = page.locator(`#jobs tr[data-job="${completedJob}"]`);
  await row.waitFor({ timeout: 10000 });
  seen.completed_state = (await row.locator(".state").textContent()).trim();
  seen.jobs_listed = await page.locator("#jobs tbody tr").count();
  await page.locator("#dead-letters tbody tr").first().waitFor({ timeout: 10000 });
  seen.dead_letter_classes = await page.locator("#dead-letters tbody tr td:first-child").allTextContents();
  await page.screenshot({ path: `${shots}/jobs.png`, fullPage: true });

  await page.click(`#jobs tr[data-job="${failedJob}"] a`);
  await page.locator("#failures tbody tr").first().waitFor({ timeout: 10000 });
  // Rows show as the listing streams; the note and the dead letters by
  // class come once it has ended.
  await page.locator("#failures-note", { hasText: /failures\./ }).waitFor({ timeout: 10000 });
  seen.failed_state = (await page.locator("#job-state").textContent()).trim();
  seen.failures = await page.locator("#failures tbody tr").evaluateAll((rows) =>
    rows.map((r) => Array.from(r.cells, (c) => c.textContent)));
  seen.failures_note = await page.locator("#failures-note").textContent();
  seen.has_failed_id = seen.failures.some((cells) => cells[1] === failedID);
  seen.job_dead_classes = await page.locator("#job-dead tbody tr td:first-child").allTextContents();
  await page.screenshot({ path: `${shots}/job.png`, fullPage: true });
  seen.console_errors = consoleErrors;
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}

// The timing story of a turn: the same steps as hotsession/cli/render.py's timing_story(), so
// the dashboard and `hotsession ask` show the same segments and percentages for the same turn
// (tests/browser/test_timing_story.py checks it). Each segment is a share of total_ms; the
// optional ones (queued behind other turns, starting a process, waiting for someone to answer a
// permission question) are shown only from 1%.

export const TIMING_SEGMENTS = [
  // [key, label, field of the timing record, optional]
  ["queued", "Queued", "queued_ms", true],
  ["start", "Start", "claim_ms", true],
  ["ttfe", "TTFE", "ttfe_ms", false],
  ["thinking", "Thinking", "thinking_ms", false],
  ["tools", "Tools", "tools_ms", false],
  ["waiting", "Waiting", "waiting_ms", true], // for a human to answer a permission question
];

const POOL_HIT_SOURCES = new Set(["spare", "spare-switched", "hot", "warm"]);
const COLD_SOURCES = new Set(["spawn", "resume"]);

// Half-up, as render.py's _half_up: both languages then round the same doubles the same way.
const halfUp = (x) => Math.floor(x + 0.5);

/** `850ms`, `1.2s`, `2m05s`. */
export function formatDuration(ms) {
  if (ms < 1000) return `${halfUp(ms)}ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${(halfUp(seconds * 10) / 10).toFixed(1)}s`;
  const whole = halfUp(seconds);
  return `${Math.floor(whole / 60)}m${String(whole % 60).padStart(2, "0")}s`;
}

const percent = (share) => (share > 0 && share < 0.5 ? "<1%" : `${halfUp(share)}%`);

function number(t, key) {
  const v = t[key];
  return typeof v === "number" && Number.isFinite(v) && v > 0 ? v : 0;
}

/** `pool hit` for a process that was already running, `cold start` for a spawn or a resume. */
export function formatSource(source) {
  if (POOL_HIT_SOURCES.has(source)) return "pool hit";
  if (COLD_SOURCES.has(source)) return "cold start";
  return source ? String(source) : "unknown source";
}

/** {total_ms, total, segments: [{key, label, ms, percent}], source, text}: see render.py. */
export function timingStory(timing) {
  const t = timing || {};
  const total = number(t, "total_ms");
  const segments = [];
  if (total > 0) {
    for (const [key, label, field, optional] of TIMING_SEGMENTS) {
      const ms = number(t, field);
      const share = (100 * ms) / total;
      if (optional && share < 1) continue;
      segments.push({ key, label, ms, percent: percent(share) });
    }
  }
  const source = formatSource(t.source);
  const text = [formatDuration(total), ...segments.map((s) => `${s.label} ${s.percent}`), source].join(" · ");
  return { total_ms: total, total: formatDuration(total), segments, source, text };
}

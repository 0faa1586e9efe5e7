// Preloaded into a test server (NODE_OPTIONS=--import=<this file's URL>) to measure its event-loop delay while a
// hostile tenant floods it: every second it appends that second's delay histogram (max, p99, mean, in ms) to the
// file CODECOURIER_TEST_EVENT_LOOP_FILE names, one JSON line each, with the server's pid. Does nothing without it.
import { appendFileSync } from "node:fs";
import { monitorEventLoopDelay } from "node:perf_hooks";

/** One second of the server's event-loop delay. */
export interface EventLoopWindow {
  pid: number;
  /** When the window ended (ms since the epoch). */
  at: number;
  maxMs: number;
  p99Ms: number;
  meanMs: number;
}

const file = process.env.CODECOURIER_TEST_EVENT_LOOP_FILE;
// Only the server itself: anything it spawns with its environment must not load the probe again.
delete process.env.CODECOURIER_TEST_EVENT_LOOP_FILE;
if (process.env.NODE_OPTIONS !== undefined) process.env.NODE_OPTIONS = process.env.NODE_OPTIONS.replace(/--import=\S*event-loop-probe\S*/g, "").trim();

if (file !== undefined) {
  const histogram = monitorEventLoopDelay({ resolution: 10 });
  histogram.enable();
  const timer = setInterval(() => {
    const window: EventLoopWindow = {
      pid: process.pid,
      at: Date.now(),
      maxMs: histogram.max / 1e6,
      p99Ms: histogram.percentile(99) / 1e6,
      meanMs: histogram.mean / 1e6,
    };
    histogram.reset();
    appendFileSync(file, `${JSON.stringify(window)}\n`);
  }, 1000);
  timer.unref();
}

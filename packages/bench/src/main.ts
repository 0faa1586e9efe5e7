/**
 * `npm run bench -- <suite> [--runs N] [suite flags]`: measures, prints a markdown table, writes
 * bench/results/<suite>.json.
 *
 * Suite flags (lifecycle): --duration S (createsPerSecond window, default 60), --idle-clones N (default 10),
 * --density (also run idleClonesHeld), --max-clones N (density cap, default 200), --min-available-mib M (density stops
 * when the host's MemAvailable drops below this, default 2048), --density-minutes M (density time cap, default 15).
 */
import { bootSuite } from "./suites/boot.js";
import { lifecycleSuite } from "./suites/lifecycle.js";
import { apiSuite } from "./suites/api.js";
import { networkSuite } from "./suites/network.js";
import { report, type SuiteResult } from "./report.js";

export interface BenchOptions {
  durationS?: number;
  idleClones?: number;
  density: boolean;
  maxClones?: number;
  minAvailableMiB?: number;
  densityMinutes?: number;
}

type Suite = { defaultRuns: number; run: (runs: number, log: (l: string) => void, options: BenchOptions) => Promise<SuiteResult> };

const suites: Record<string, Suite> = {
  boot: { defaultRuns: 20, run: (runs, log) => bootSuite(runs, log) },
  lifecycle: { defaultRuns: 10, run: lifecycleSuite },
  api: { defaultRuns: 10, run: (runs, log) => apiSuite(runs, log) },
  network: { defaultRuns: 30, run: (runs, log) => networkSuite(runs, log) },
};

const VALUE_FLAGS = ["--runs", "--duration", "--idle-clones", "--max-clones", "--min-available-mib", "--density-minutes"] as const;
const BOOLEAN_FLAGS = ["--density"] as const;

function fail(message: string): never {
  console.error(message);
  process.exit(2);
}

const args = process.argv.slice(2);
const values = new Map<string, number>();
const booleans = new Set<string>();
const names: string[] = [];
for (let i = 0; i < args.length; i++) {
  const arg = args[i]!;
  if ((VALUE_FLAGS as readonly string[]).includes(arg)) {
    const value = Number(args[++i]);
    if (!(value > 0) || (arg !== "--duration" && !Number.isInteger(value))) fail(`${arg} takes a positive ${arg === "--duration" ? "number" : "integer"}`);
    values.set(arg, value);
  } else if ((BOOLEAN_FLAGS as readonly string[]).includes(arg)) {
    booleans.add(arg);
  } else if (arg.startsWith("--")) {
    fail(`unknown flag ${arg}; known: ${[...VALUE_FLAGS, ...BOOLEAN_FLAGS].join(", ")}`);
  } else {
    names.push(arg);
  }
}
const options: BenchOptions = {
  durationS: values.get("--duration"),
  idleClones: values.get("--idle-clones"),
  density: booleans.has("--density"),
  maxClones: values.get("--max-clones"),
  minAvailableMiB: values.get("--min-available-mib"),
  densityMinutes: values.get("--density-minutes"),
};
const selected = names.length > 0 ? names : Object.keys(suites);
for (const name of selected) {
  if (!suites[name]) fail(`unknown bench suite "${name}"; known: ${Object.keys(suites).join(", ")}`);
}
for (const name of selected) {
  const suite = suites[name]!;
  const result = await suite.run(values.get("--runs") ?? suite.defaultRuns, (line) => process.stderr.write(`bench: ${line}\n`), options);
  await report(result);
}
process.exit(0);

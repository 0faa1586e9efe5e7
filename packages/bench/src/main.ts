/** `npm run bench -- <suite> [--runs N]`: measures, prints a markdown table, writes bench/results/<suite>.json. */
import { bootSuite } from "./suites/boot.js";
import { report, type SuiteResult } from "./report.js";

const suites: Record<string, { defaultRuns: number; run: (runs: number, log: (l: string) => void) => Promise<SuiteResult> }> = {
  boot: { defaultRuns: 20, run: bootSuite },
};

const args = process.argv.slice(2);
const runsIndex = args.indexOf("--runs");
const runsArg = runsIndex >= 0 ? Number(args[runsIndex + 1]) : undefined;
const names = args.filter((arg, i) => !arg.startsWith("--") && !(runsIndex >= 0 && i === runsIndex + 1));
const selected = names.length > 0 ? names : Object.keys(suites);
for (const name of selected) {
  const suite = suites[name];
  if (!suite) {
    console.error(`unknown bench suite "${name}"; known: ${Object.keys(suites).join(", ")}`);
    process.exit(2);
  }
  if (runsArg !== undefined && (!Number.isInteger(runsArg) || runsArg < 1)) {
    console.error("--runs takes a positive integer");
    process.exit(2);
  }
  const result = await suite.run(runsArg ?? suite.defaultRuns, (line) => process.stderr.write(`bench: ${line}\n`));
  await report(result);
}
process.exit(0);

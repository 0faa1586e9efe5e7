// The SDK's portable suite: the same checks against a real server on Node 20+, Bun and Deno.
//
//   CODECOURIER_URL=http://127.0.0.1:7070 CODECOURIER_API_KEY=cc_… node packages/sdk/dist/portable-suite/main.js
//   … node_modules/.bin/bun packages/sdk/dist/portable-suite/main.js
//   … node_modules/.bin/deno run -A packages/sdk/dist/portable-suite/main.js
//
// Prints one line per check and exits 1 at the first failure (0 when all pass, 2 when not configured).
// packages/engine/src/server/sdk-runtimes.test.ts runs it under all three against a server of its own.
//
// To cover a new SDK feature: add a checks/<feature>.ts exporting a Check[] and list it below, before the
// lifecycle checks (they pause and kill the main sandbox). Only what the server already offers belongs here.
import { commandChecks, createMainSandbox } from "./checks/commands.js";
import { errorChecks } from "./checks/errors.js";
import { fileChecks } from "./checks/files.js";
import { fileDiskChecks } from "./checks/files-disk.js";
import { lifecycleChecks } from "./checks/lifecycle.js";
import { networkChecks } from "./checks/network.js";
import { processChecks } from "./checks/processes.js";
import { watchChecks } from "./checks/watch.js";
import { exit, print, readEnv, runChecks, runtimeName, type Check, type SuiteContext } from "./harness.js";

const CHECKS: readonly Check[] = [...errorChecks, createMainSandbox, ...commandChecks, ...processChecks, ...fileChecks, ...fileDiskChecks, ...watchChecks, ...networkChecks, ...lifecycleChecks];

const url = readEnv("CODECOURIER_URL");
const apiKey = readEnv("CODECOURIER_API_KEY");
if (!url || !apiKey) {
  print("the portable suite needs a server: set CODECOURIER_URL and CODECOURIER_API_KEY (codecourier keys create --tenant NAME)");
  exit(2);
}

const runtime = runtimeName();
const context: SuiteContext = {
  runtime,
  connection: { url, apiKey },
  runId: `${runtime.split(" ")[0]}-${Date.now().toString(36)}-${crypto.randomUUID().slice(0, 8)}`,
  cleanup: [],
};
print(`SDK portable suite on ${runtime} against ${url} (run ${context.runId})`);
exit((await runChecks(CHECKS, context)) ? 0 : 1);

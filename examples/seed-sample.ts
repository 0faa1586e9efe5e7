// The sample from CodeCourier's front page, as written there, against a server started with `npm start`.
// Two differences, until the issues that add them land: no `secret()` (the secrets issue) — the variable is read
// from this process's environment instead — and the `base` template instead of `node-22-ts` (the templates issue),
// which has no pnpm, so the "migration" is a shell stand-in that reports what it would do.
//
// Run: npm start (once), then
//   CODECOURIER_API_KEY=… CODECOURIER_REGION=eu-west-1 npm start   # the sample asks for region eu-west-1
//   CODECOURIER_API_KEY=… node examples/dist/seed-sample.js
import { createSandbox } from "@codecourier/sdk";

const source = `export function Button() {\n  return <button>Ship it</button>;\n}\n`;

const sandbox = await createSandbox({
  template: "base", // the front page says "node-22-ts"
  region: "eu-west-1",
  cpu: 4,
  memoryMB: 8192,
  env: { DATABASE_URL: process.env.DATABASE_URL ?? "postgres://db.internal/app" }, // the front page: secret("db-prod")
});
console.log(`sandbox ${sandbox.sandboxId}`);

const result = await sandbox.runCommand(
  'command -v pnpm >/dev/null && pnpm db:migrate || echo "pnpm db:migrate would run against ${DATABASE_URL%%/*}//…"',
);
console.log(`migration exited ${result.exitCode}: ${result.stdout.trim()}`);

const snap = await sandbox.snapshot(); // → snap-…
console.log(`snapshot ${snap}`);
await sandbox.pause();
console.log(`paused: ${(await sandbox.info()).state}`);

await sandbox.files.write("src/Button.tsx", source); // a paused sandbox resumes for this
const out = await sandbox.files.read("src/Button.tsx");
console.log(`read back ${out.length} bytes, ${out === source ? "identical" : "DIFFERENT"}`);

await sandbox.kill();
console.log("killed");

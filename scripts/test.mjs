#!/usr/bin/env node
// Runs every compiled test file (packages/*/dist/**/*.test.js) with Node's test runner.
// Usage: node scripts/test.mjs [substring…] — only files whose path contains one of the substrings.
import { readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const root = join(fileURLToPath(import.meta.url), "..", "..");
const filters = process.argv.slice(2);

function find(dir, out = []) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) find(path, out);
    else if (name.endsWith(".test.js")) out.push(path);
  }
  return out;
}

const files = readdirSync(join(root, "packages"))
  .flatMap((pkg) => {
    try {
      return find(join(root, "packages", pkg, "dist"));
    } catch {
      return [];
    }
  })
  .map((f) => relative(root, f))
  .filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)))
  .sort();
if (files.length === 0) {
  console.error("no test files found; run `npm run build` first");
  process.exit(1);
}
// One file at a time: VM tests are CPU-heavy and this machine has two cores. The time limit applies to each test
// file as a whole too: 15 min holds the slowest (files-api, with its 1 GiB round trip: ~9 min under TCG here), and a
// hung test still fails instead of eating the CI budget.
const result = spawnSync(process.execPath, ["--test", "--test-concurrency=1", "--test-timeout=900000", ...files], { stdio: "inherit", cwd: root });
process.exit(result.status ?? 1);

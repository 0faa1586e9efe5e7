import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { arch, platform } from "node:os";
import { dirname, join } from "node:path";

/** The JavaScript runtimes the SDK promises to run on. */
export type JsRuntime = "node" | "bun" | "deno";
export const JS_RUNTIMES: readonly JsRuntime[] = ["node", "bun", "deno"];

/** How to run an ES module file under one runtime: `executable ...scriptArgs file`. */
export interface RuntimeCommand {
  runtime: JsRuntime;
  executable: string;
  scriptArgs: string[];
}

/**
 * Node is this process's own binary. Bun and Deno are the binaries of their npm packages (devDependencies of
 * packages/sdk), resolved from `packageJsonPath` as that package would resolve them, hoisted or not; nothing is
 * looked up on PATH, so every machine runs the pinned versions.
 *
 * Both packages install their binary from a per-platform optional dependency; a postinstall script then moves
 * (bun) or copies (deno) it into the main package. The platform package is a candidate too, for an install that
 * ran without scripts. Returns an Error saying how to install the runtime when no candidate answers `--version`.
 */
export function findRuntime(runtime: JsRuntime, packageJsonPath: string): RuntimeCommand | Error {
  if (runtime === "node") return { runtime, executable: process.execPath, scriptArgs: [] };
  const fromSdk = createRequire(packageJsonPath);
  const packageDir = (name: string) => dirname(fromSdk.resolve(`${name}/package.json`));
  const fromPackage = (name: string, file: string) => createRequire(join(packageDir(name), "package.json")).resolve(file);
  if (runtime === "bun") {
    const platformPackage = `@oven/bun-${platform()}-${arch() === "arm64" ? "aarch64" : arch()}`;
    const bun = findBinary(
      "bun",
      [() => join(packageDir("bun"), "bin", "bun.exe"), () => fromPackage("bun", `${platformPackage}/bin/bun`), () => fromPackage("bun", `${platformPackage}-musl/bin/bun`)],
      `It comes from the npm package \`bun\`: its postinstall script moves the binary of ${platformPackage} into ` +
        "node_modules/bun/bin/bun.exe, a placeholder until then.",
    );
    return bun instanceof Error ? bun : { runtime, executable: bun, scriptArgs: [] };
  }
  const platformPackage = `@deno/${platform()}-${arch()}${platform() === "linux" ? "-glibc" : ""}`;
  const deno = findBinary(
    "deno",
    [() => join(packageDir("deno"), "deno"), () => fromPackage("deno", `${platformPackage}/deno`)],
    `It comes from the npm package \`deno\` and its platform package ${platformPackage}.`,
  );
  // -A: the suite reads env and talks to a local server. --no-lock: a run must not leave a deno.lock behind.
  return deno instanceof Error ? deno : { runtime, executable: deno, scriptArgs: ["run", "-A", "--no-lock"] };
}

/** The first candidate path that answers `--version`, or an Error listing what was tried and how to fix it. */
function findBinary(name: string, candidates: Array<() => string>, howItInstalls: string): string | Error {
  const tried: string[] = [];
  for (const candidate of candidates) {
    let path: string;
    try {
      path = candidate();
    } catch (error) {
      const why = `(${(error as Error).message.split("\n")[0]})`;
      if (!tried.includes(why)) tried.push(why);
      continue;
    }
    if (!existsSync(path)) {
      tried.push(`${path} (missing)`);
      continue;
    }
    const probe = spawnSync(path, ["--version"], { encoding: "utf8", timeout: 30_000 });
    if (probe.status === 0) return path;
    const why = probe.error?.message ?? `--version exited ${probe.status}: ${(probe.stderr || probe.stdout).trim().slice(0, 200)}`;
    tried.push(`${path} (${why})`);
  }
  return new Error(
    `no working ${name} binary. ${howItInstalls} Fix: run \`npm ci\` (or \`npm install\`) at the repository root, ` +
      `without --ignore-scripts or --omit=optional.\nTried:\n  ${tried.join("\n  ")}`,
  );
}

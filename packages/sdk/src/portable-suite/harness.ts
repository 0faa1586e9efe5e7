// The portable suite's harness: runtime detection, environment, a small assert library and the check runner.
// It must run unchanged on Node 20+, Bun and Deno, so it uses only web APIs and what all three put on globalThis —
// no `node:` imports (the SDK's own promise), no test framework (none is shared by the three).
import type { Sandbox } from "../index.js";

/** The runtime executing the suite, as "name version". Deno and Bun both also provide `process`, so they go first. */
export function runtimeName(): string {
  const g = globalThis as { Deno?: { version: { deno: string } }; Bun?: { version: string }; process?: { versions?: { node?: string } } };
  if (g.Deno) return `deno ${g.Deno.version.deno}`;
  if (g.Bun) return `bun ${g.Bun.version}`;
  return `node ${g.process?.versions?.node ?? "?"}`;
}

/** An environment variable on any of the three runtimes (Deno needs --allow-env; `deno run -A` grants it). */
export function readEnv(name: string): string | undefined {
  const g = globalThis as { Deno?: { env: { get(name: string): string | undefined } }; process?: { env: Record<string, string | undefined> } };
  const value = g.Deno ? g.Deno.env.get(name) : g.process?.env[name];
  return value === "" ? undefined : value;
}

export function exit(code: number): never {
  const g = globalThis as { Deno?: { exit(code: number): never }; process?: { exit(code: number): never } };
  return g.Deno ? g.Deno.exit(code) : g.process!.exit(code);
}

export function print(line: string): void {
  console.log(line);
}

/** What every check gets: where the server is, the run's unique tag, and the sandboxes made so far. */
export interface SuiteContext {
  readonly runtime: string;
  readonly connection: { url: string; apiKey: string };
  /** Unique per run; the main sandbox carries it as metadata, so listings find this run's sandboxes only. */
  readonly runId: string;
  /** The sandbox most checks work in; set by the create check. */
  sandbox?: Sandbox;
  /** Killed after the run, also when a check failed half-way (the server would otherwise keep their VMs). */
  readonly cleanup: Sandbox[];
}

/** The main sandbox, or a failure saying which check should have made it. */
export function mainSandbox(context: SuiteContext): Sandbox {
  if (!context.sandbox) throw new AssertionFailed("no sandbox: the createSandbox check must run first");
  return context.sandbox;
}

/**
 * One named check. Checks run in order, share the context, and stop at the first failure: later checks build on
 * earlier ones (the sandbox, files written before a snapshot), so going on would only repeat the first error.
 */
export interface Check {
  name: string;
  run(context: SuiteContext): Promise<void>;
}

export class AssertionFailed extends Error {
  override name = "AssertionFailed";
}

const show = (value: unknown): string => {
  if (value instanceof Uint8Array) return `Uint8Array(${value.length})`;
  try {
    const text = JSON.stringify(value);
    return text === undefined ? String(value) : text.length > 300 ? `${text.slice(0, 300)}…` : text;
  } catch {
    return String(value);
  }
};

export function assertOk(value: unknown, message: string): asserts value {
  if (!value) throw new AssertionFailed(message);
}

/** Strict equality for primitives; arrays and plain objects are compared by their JSON. */
export function assertEqual<T>(actual: T, expected: T, what: string): void {
  const same = typeof expected === "object" && expected !== null ? JSON.stringify(actual) === JSON.stringify(expected) : Object.is(actual, expected);
  if (!same) throw new AssertionFailed(`${what}: expected ${show(expected)}, got ${show(actual)}`);
}

type ErrorClass<E extends Error> = abstract new (...args: never[]) => E;

/** Awaits `promise`, which must reject with an instance of `errorClass`; returns the error for further checks. */
export async function assertRejects<E extends Error>(promise: Promise<unknown>, errorClass: ErrorClass<E>, what: string): Promise<E> {
  let result: unknown;
  try {
    result = await promise;
  } catch (error) {
    if (error instanceof errorClass) return error;
    const name = error instanceof Error ? `${error.name}: ${error.message}` : show(error);
    throw new AssertionFailed(`${what}: expected ${errorClass.name}, got ${name}`, { cause: error });
  }
  throw new AssertionFailed(`${what}: expected ${errorClass.name}, but it resolved with ${show(result)}`);
}

/** Runs the checks in order, one line each; on the first failure prints it and returns false. Cleans up either way. */
export async function runChecks(checks: readonly Check[], context: SuiteContext): Promise<boolean> {
  const started = Date.now();
  let passed = true;
  for (const check of checks) {
    const checkStarted = Date.now();
    try {
      await check.run(context);
      print(`ok    ${check.name} (${Date.now() - checkStarted} ms)`);
    } catch (error) {
      print(`FAIL  ${check.name} (${Date.now() - checkStarted} ms) on ${context.runtime}`);
      print(`      ${describeError(error).split("\n").join("\n      ")}`);
      passed = false;
      break;
    }
  }
  for (const sandbox of context.cleanup) {
    // Best effort: a cleanup error must not hide the check's own, and the server kills strays at their timeout.
    // kill() of a sandbox that has already ended is no error, so checks that killed theirs need not say so.
    await sandbox.kill().catch((error: unknown) => print(`warn  could not kill ${sandbox.sandboxId}: ${describeError(error)}`));
  }
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  print(passed ? `pass  all ${checks.length} checks on ${context.runtime} in ${seconds} s` : `fail  on ${context.runtime} after ${seconds} s`);
  return passed;
}

function describeError(error: unknown): string {
  if (!(error instanceof Error)) return show(error);
  const fields = ["code", "status"]
    .map((key) => [key, (error as unknown as Record<string, unknown>)[key]] as const)
    .filter(([, value]) => value !== undefined)
    .map(([key, value]) => `${key}=${show(value)}`);
  const stack = error.stack?.split("\n").slice(1, 6).join("\n") ?? "";
  // An assertion's message already quotes the error it caught; a cause adds a line only when it says more.
  const cause = error.cause instanceof Error && !error.message.includes(error.cause.message) ? `\ncaused by ${error.cause.name}: ${error.cause.message}` : "";
  return `${error.name}: ${error.message}${fields.length ? ` (${fields.join(", ")})` : ""}${cause}\n${stack}`;
}

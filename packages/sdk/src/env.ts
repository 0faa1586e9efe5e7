import { AuthError, CodeCourierError } from "./errors.js";

export const DEFAULT_URL = "http://127.0.0.1:7070";

/** Where to reach the server and as whom. Unset fields come from CODECOURIER_API_KEY and CODECOURIER_URL. */
export interface ConnectionOptions {
  /** An API key (`codecourier keys create --tenant NAME`). Default: CODECOURIER_API_KEY. */
  apiKey?: string;
  /** The server's base URL; may carry a path prefix behind a proxy. Default: CODECOURIER_URL or http://127.0.0.1:7070. */
  url?: string;
}

export type EnvReader = (name: string) => string | undefined;

/**
 * One environment variable, on Node, Bun and Deno alike, or undefined. Never throws: Deno without --allow-env
 * throws on any read, and a missing variable must then fall back to the default like an unset one. An empty
 * value counts as unset, so that `CODECOURIER_URL= cmd` means "the default".
 */
export const readEnv: EnvReader = (name) => {
  const g = globalThis as {
    process?: { env?: Record<string, string | undefined> };
    Deno?: { env?: { get(name: string): string | undefined } };
  };
  let value: string | undefined;
  try {
    value = g.process?.env?.[name];
  } catch {
    // Deno's `process` shim may throw without env permission; try Deno.env below, which also may.
  }
  if (value === undefined && g.Deno?.env) {
    try {
      value = g.Deno.env.get(name);
    } catch {
      value = undefined;
    }
  }
  return value === "" ? undefined : value;
};

/** The server's base URL without trailing slashes, so that paths ("/v1/...") append to it as they are. */
export function resolveUrl(options: ConnectionOptions = {}, env: EnvReader = readEnv): string {
  const url = (options.url || env("CODECOURIER_URL") || DEFAULT_URL).replace(/\/+$/, "");
  try {
    new URL(url);
  } catch {
    throw new CodeCourierError(`the CodeCourier URL ${JSON.stringify(url)} is not a URL (set CODECOURIER_URL or pass { url })`, {
      code: "bad_request",
    });
  }
  return url;
}

/** The API key, or an AuthError that says how to get one: the server's 401 would say less. */
export function resolveApiKey(options: ConnectionOptions = {}, env: EnvReader = readEnv): string {
  const apiKey = options.apiKey || env("CODECOURIER_API_KEY");
  if (!apiKey) {
    throw new AuthError(
      "no CodeCourier API key: pass { apiKey } or set CODECOURIER_API_KEY. " +
        "Create one on the server's host with `codecourier keys create --tenant NAME`.",
      { status: undefined },
    );
  }
  return apiKey;
}

// Connection settings: options first, then CODECOURIER_* variables, then defaults (pure: env is injected).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DEFAULT_URL, readEnv, resolveApiKey, resolveUrl, type EnvReader } from "./env.js";
import { AuthError, CodeCourierError } from "./errors.js";

const envOf =
  (vars: Record<string, string>): EnvReader =>
  (name) =>
    vars[name] === "" ? undefined : vars[name];
const noEnv = envOf({});

describe("connection settings", () => {
  it("takes the URL from options, else CODECOURIER_URL, else the default, without trailing slashes", () => {
    assert.equal(resolveUrl({}, noEnv), DEFAULT_URL);
    assert.equal(resolveUrl({}, envOf({ CODECOURIER_URL: "http://cc.example:8080/" })), "http://cc.example:8080");
    assert.equal(resolveUrl({ url: "https://proxy.example/cc//" }, envOf({ CODECOURIER_URL: "http://other" })), "https://proxy.example/cc");
    assert.throws(() => resolveUrl({ url: "not a url" }, noEnv), CodeCourierError);
  });

  it("takes the key from options, else CODECOURIER_API_KEY; none is an AuthError that says how to get one", () => {
    assert.equal(resolveApiKey({ apiKey: "cc_a" }, envOf({ CODECOURIER_API_KEY: "cc_b" })), "cc_a");
    assert.equal(resolveApiKey({}, envOf({ CODECOURIER_API_KEY: "cc_b" })), "cc_b");
    for (const options of [{}, { apiKey: "" }]) {
      assert.throws(
        () => resolveApiKey(options, noEnv),
        (error: unknown) =>
          error instanceof AuthError &&
          error.status === undefined &&
          error.code === "unauthorized" &&
          error.message.includes("codecourier keys create --tenant NAME") &&
          error.message.includes("CODECOURIER_API_KEY"),
      );
    }
  });

  it("reads process.env, treats an empty value as unset, and survives a Deno that denies env access", () => {
    const name = "CODECOURIER_SDK_TEST_VAR";
    process.env[name] = "x";
    assert.equal(readEnv(name), "x");
    process.env[name] = "";
    assert.equal(readEnv(name), undefined);
    delete process.env[name];

    const g = globalThis as { Deno?: unknown };
    g.Deno = {
      env: {
        get: (n: string) => {
          if (n === "DENIED") throw new Error("PermissionDenied: Requires env access");
          return n === "FROM_DENO" ? "deno" : undefined;
        },
      },
    };
    try {
      assert.equal(readEnv("FROM_DENO"), "deno");
      assert.equal(readEnv("DENIED"), undefined);
    } finally {
      delete g.Deno;
    }
  });
});

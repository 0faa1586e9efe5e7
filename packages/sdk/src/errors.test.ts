// Error answers of the API → the SDK's typed errors (pure: no server).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  AuthError,
  BadRequestError,
  CodeCourierError,
  ConflictError,
  NotFoundError,
  QuotaError,
  SandboxGoneError,
  errorFromResponse,
} from "./errors.js";

const body = (code: string, message: string) => JSON.stringify({ error: { code, message } });

describe("errorFromResponse", () => {
  it("maps each API error code to its class, keeping status, code and the server's message", () => {
    const cases: Array<[number, string, new (...args: never[]) => CodeCourierError]> = [
      [400, "bad_request", BadRequestError],
      [413, "payload_too_large", BadRequestError],
      [401, "unauthorized", AuthError],
      [403, "forbidden", AuthError],
      [404, "not_found", NotFoundError],
      [409, "conflict", ConflictError],
      [429, "quota_exceeded", QuotaError],
    ];
    for (const [status, code, type] of cases) {
      const error = errorFromResponse(status, body(code, `msg ${code}`));
      assert.ok(error instanceof type, `${code} → ${type.name}, got ${error.name}`);
      assert.ok(error instanceof CodeCourierError);
      assert.equal(error.status, status);
      assert.equal(error.code, code);
      assert.equal(error.message, `msg ${code}`);
      assert.equal(error.name, type.name);
    }
  });

  it("follows the body's code, not the status: quota_exceeded is a QuotaError as 403 or 429", () => {
    const as403 = errorFromResponse(403, body("quota_exceeded", "this tenant already has 5 sandboxes"));
    const as429 = errorFromResponse(429, body("quota_exceeded", "cpu 8 is over this tenant's limit of 4"));
    assert.ok(as403 instanceof QuotaError && as429 instanceof QuotaError);
    assert.equal(as403.status, 403);
    assert.equal(as429.status, 429);
  });

  it("tells a sandbox that is no longer running (SandboxGoneError, still a NotFoundError) from an unknown id", () => {
    const gone = errorFromResponse(404, body("not_found", "sandbox sb_1 is no longer running"));
    assert.ok(gone instanceof SandboxGoneError);
    assert.ok(gone instanceof NotFoundError);
    const unknown = errorFromResponse(404, body("not_found", "no sandbox sb_2"));
    assert.ok(unknown instanceof NotFoundError);
    assert.ok(!(unknown instanceof SandboxGoneError));
  });

  it("falls back to the status for a body that is not an API error (a proxy answered)", () => {
    const quota = errorFromResponse(429, "<html>Too Many Requests</html>");
    assert.ok(quota instanceof QuotaError);
    assert.equal(quota.code, "quota_exceeded");
    assert.match(quota.message, /HTTP 429: <html>Too Many Requests/);
    const auth = errorFromResponse(401, "");
    assert.ok(auth instanceof AuthError);
    assert.equal(auth.message, "the server answered HTTP 401");
    const gateway = errorFromResponse(502, JSON.stringify({ message: "bad gateway" }));
    assert.equal(gateway.constructor, CodeCourierError);
    assert.equal(gateway.code, "error");
    assert.equal(gateway.status, 502);
  });

  it("keeps codes it does not know (a newer server) as a plain CodeCourierError", () => {
    const error = errorFromResponse(500, body("internal", "internal error; see the server log"));
    assert.equal(error.constructor, CodeCourierError);
    assert.equal(error.code, "internal");
    const unknown = errorFromResponse(422, body("brand_new", "something new"));
    assert.equal(unknown.constructor, CodeCourierError);
    assert.equal(unknown.code, "brand_new");
  });
});

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ToolError } from "../util/run-tool.js";
import { VmCrashedError } from "../vmm/errors.js";
import { toApiError } from "./api-error.js";

describe("toApiError: a server out of file descriptors", () => {
  it("answers 503 unavailable for EMFILE and ENFILE, however deep in the causes, and still has it logged", () => {
    const emfile = Object.assign(new Error("EMFILE: too many open files, open '/x'"), { code: "EMFILE" });
    const spawnFailed = new ToolError("qemu-img", null, "spawn qemu-img EMFILE");
    const wrapped = new VmCrashedError("VM vm-1 failed to start: boom", "vm-1", undefined, { cause: new Error("outer", { cause: spawnFailed }) });
    const enfile = Object.assign(new Error("no room"), { code: "ENFILE" });
    for (const error of [emfile, spawnFailed, wrapped, enfile]) {
      const { apiError, unexpected } = toApiError(error);
      assert.equal(apiError.code, "unavailable", String(error));
      assert.equal(apiError.status, 503);
      assert.match(apiError.message, /out of file descriptors/);
      assert.equal(unexpected, true, "the operator still sees it in the log");
    }
  });

  it("leaves other failures internal", () => {
    for (const error of [new Error("EMFILES are not a thing"), new ToolError("ip", 1, "RTNETLINK answers: File exists"), "EMFILE as a string"]) {
      assert.equal(toApiError(error).apiError.code, "internal", String(error));
    }
  });
});

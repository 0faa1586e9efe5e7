import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { chooseEncoding, commandResultJson, jsonStringPieces, withoutPartialCharacter, type CompletedCommand } from "./command-output.js";

function completed(fields: Partial<CompletedCommand>): CompletedCommand & { released: number } {
  const command = {
    exitCode: 0,
    signal: null,
    timedOut: false,
    stdout: Buffer.alloc(0),
    stderr: Buffer.alloc(0),
    stdoutTotalBytes: 0,
    stderrTotalBytes: 0,
    stdoutTruncated: false,
    stderrTruncated: false,
    released: 0,
    release: () => void command.released++,
    ...fields,
  };
  return command;
}

async function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  let text = "";
  for await (const chunk of stream) text += chunk.toString();
  return text;
}

describe("command output encoding", () => {
  it("sends UTF-8 text as text, and NUL bytes, invalid UTF-8 or control-heavy output as base64", async () => {
    assert.equal(await chooseEncoding(Buffer.from("héllo \"world\"\n\t✓")), "utf8");
    assert.equal(await chooseEncoding(Buffer.alloc(0)), "utf8");
    assert.equal(await chooseEncoding(Buffer.from([0x61, 0x00, 0x62])), "base64", "a NUL");
    assert.equal(await chooseEncoding(Buffer.from([0xff, 0xfe])), "base64", "not UTF-8");
    assert.equal(await chooseEncoding(Buffer.alloc(1000, 1)), "base64", "\\u0001 each: 6× as JSON");
    assert.equal(await chooseEncoding(Buffer.from(`${"text ".repeat(200)}\x1b[1mbold\x1b[0m`)), "utf8", "a few escapes in text");
    assert.equal(await chooseEncoding(Buffer.alloc(3 * 1024 * 1024, "a")), "utf8", "scanned in slices");
  });

  it("drops a character cut in half at the end, and nothing else", () => {
    const text = Buffer.from("aé✓😀");
    assert.deepEqual(withoutPartialCharacter(text), text);
    assert.equal(withoutPartialCharacter(text.subarray(0, text.length - 1)).toString(), "aé✓");
    assert.equal(withoutPartialCharacter(text.subarray(0, text.length - 3)).toString(), "aé✓");
    assert.equal(withoutPartialCharacter(text.subarray(0, 2)).toString(), "a");
    assert.deepEqual(withoutPartialCharacter(Buffer.alloc(0)), Buffer.alloc(0));
  });

  it("writes strings in pieces that join into exactly the JSON of the whole", () => {
    const text = Buffer.from("é\"\\\n✓".repeat(40_000));
    assert.equal(`"${[...jsonStringPieces(text, "utf8")].join("")}"`, JSON.stringify(text.toString()));
    assert.ok([...jsonStringPieces(text, "utf8")].length > 1);
    const bytes = Buffer.from(Array.from({ length: 200_001 }, (_, i) => i % 256));
    assert.equal([...jsonStringPieces(bytes, "base64")].join(""), bytes.toString("base64"));
  });
});

describe("commandResultJson", () => {
  it("is the CommandResult as JSON, and releases the output's budget once sent", async () => {
    const command = completed({
      exitCode: 3,
      stdout: Buffer.from([0, 1, 2]),
      stderr: Buffer.from("warn: é"),
      stdoutTotalBytes: 9,
      stderrTotalBytes: 8,
      stdoutTruncated: true,
    });
    const json = JSON.parse(await readAll(commandResultJson(command))) as Record<string, unknown>;
    assert.deepEqual(json, {
      exitCode: 3,
      signal: null,
      timedOut: false,
      stdoutEncoding: "base64",
      stderrEncoding: "utf8",
      stdoutTruncated: true,
      stderrTruncated: false,
      stdoutTotalBytes: 9,
      stderrTotalBytes: 8,
      stdout: "AAEC",
      stderr: "warn: é",
    });
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(command.released, 1);
  });

  it("releases the budget when the answer is abandoned half way", async () => {
    const command = completed({ stdout: Buffer.alloc(4 * 1024 * 1024, "x"), stdoutTotalBytes: 4 * 1024 * 1024 });
    const stream = commandResultJson(command);
    await new Promise((resolve) => stream.once("readable", resolve));
    stream.destroy();
    await new Promise((resolve) => stream.once("close", resolve));
    assert.equal(command.released, 1);
  });
});

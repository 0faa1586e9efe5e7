// Builds the guest's identity helper the way the system-disk build does and checks its input validation. A valid
// invocation is left to the real-VM test (agent-client/identity-vm.test.ts): here, as root, it would set the
// host's clock.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { compileGuestIdentityHelper } from "./guest-identity-helper.js";

/** Program header type of the segment that names a dynamically linked executable's loader. */
const PT_INTERP = 3;

/** The p_type of every program header of a little-endian ELF64 file. */
function programHeaderTypes(elf: Buffer): number[] {
  const offset = Number(elf.readBigUInt64LE(0x20));
  const entrySize = elf.readUInt16LE(0x36);
  const count = elf.readUInt16LE(0x38);
  return Array.from({ length: count }, (_, i) => elf.readUInt32LE(offset + i * entrySize));
}

describe("guest-identity helper", () => {
  let dir: string;
  let helper: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "cc-identity-helper-"));
    helper = join(dir, "guest-identity");
    await compileGuestIdentityHelper(helper);
  });
  after(() => rm(dir, { recursive: true, force: true }));

  const run = (args: string[], input: Buffer) => {
    const result = spawnSync(helper, args, { input });
    return { status: result.status, stderr: result.stderr.toString() };
  };

  it("is a static executable, so it runs in any root filesystem", async () => {
    const elf = await readFile(helper);
    assert.ok(elf.subarray(0, 4).equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46])), "an ELF file");
    assert.equal(programHeaderTypes(elf).includes(PT_INTERP), false, "no dynamic loader to find in the guest");
  });

  it("rejects bad arguments and entropy before changing anything (exit 2)", () => {
    const entropy = randomBytes(64);
    const cases: Array<[string[], Buffer, RegExp]> = [
      [[], entropy, /exactly one argument/],
      [["1700000000000", "extra"], entropy, /exactly one argument/],
      [["-5"], entropy, /non-negative integer/],
      [["12ms"], entropy, /non-negative integer/],
      [["1700000000000"], randomBytes(31), /too little entropy/],
      [["1700000000000"], randomBytes(513), /too much entropy/],
    ];
    for (const [args, input, message] of cases) {
      const result = run(args, input);
      assert.equal(result.status, 2, `${args.join(" ")}: ${result.stderr}`);
      assert.match(result.stderr, message);
    }
  });

  it("in --serve mode answers every malformed request with an error line and keeps serving", () => {
    const lines = [
      "1700000000000",
      "-5 " + "ab".repeat(32),
      "1700000000000 " + "ab".repeat(31),
      "1700000000000 " + "ab".repeat(513),
      "1700000000000 " + "zz".repeat(32),
      "1700000000000 " + "a".repeat(65),
      "x".repeat(5000),
    ];
    const result = spawnSync(helper, ["--serve"], { input: lines.map((line) => `${line}\n`).join("") });
    assert.equal(result.status, 0, result.stderr.toString());
    const answers = result.stdout.toString().trim().split("\n");
    assert.equal(answers.length, lines.length, result.stdout.toString());
    for (const answer of answers) assert.match(answer, /^error /);
  });
});

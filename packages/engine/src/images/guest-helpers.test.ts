// Builds the guest's native helpers the way the system-disk build does and checks their input validation. A valid
// identity request is left to the real-VM test (agent-client/identity-vm.test.ts): here, as root, it would set the
// host's clock. The spawner's normal use is covered through the agent (agent-client.test.ts and the VM tests).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { compileGuestHelper, guestHelper } from "./guest-helpers.js";

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
    await compileGuestHelper(guestHelper("guest-identity"), helper);
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

describe("guest-spawner helper", () => {
  let dir: string;
  let helper: string;
  const hex = (text: string) => Buffer.from(text).toString("hex");

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "cc-spawner-helper-"));
    helper = join(dir, "guest-spawner");
    await compileGuestHelper(guestHelper("guest-spawner"), helper);
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it("is a static executable", async () => {
    assert.equal(programHeaderTypes(await readFile(helper)).includes(PT_INTERP), false);
  });

  it("answers every malformed request with a failed line, starts nothing, and keeps serving", () => {
    const marker = join(dir, "ran");
    const touch = ["2", hex("/bin/sh"), hex("-c"), hex(`touch ${marker}`)].join(" ");
    const lines = [
      "garbage",
      "spawn",
      `spawn bad_id! 0 - - ${hex("/")} 1 ${hex("/bin/true")} 0`,
      `spawn a1 2 - - ${hex("/")} 1 ${hex("/bin/true")} 0`, // stdin flag must be 0 or 1
      `spawn a2 0 -1 - ${hex("/")} 1 ${hex("/bin/true")} 0`, // uid
      `spawn a3 0 - - zz 1 ${hex("/bin/true")} 0`, // cwd not hex
      `spawn a4 0 - - ${hex("/")} 0 0`, // no argv
      `spawn a5 0 - - ${hex("/")} 3 ${hex("/bin/true")} 0`, // counts do not add up
      `spawn a6 0 - - ${hex("/")} 1 ${hex("/bin/true")} 1 00`, // NUL in the environment
      `spawn a7 0 - - ${hex("/")} 1 ${hex("/bin/true")} 0 extra`,
      `spawn a8 0 - - ${hex("/")} ${touch} 0 trailing`,
      "x".repeat(9 * 1024 * 1024),
    ];
    const result = spawnSync(helper, ["--serve"], { input: lines.map((line) => `${line}\n`).join(""), maxBuffer: 1 << 20 });
    assert.equal(result.status, 0, result.stderr.toString());
    const answers = result.stdout.toString().trim().split("\n");
    assert.equal(answers.length, lines.length, result.stdout.toString());
    for (const answer of answers) assert.match(answer, /^failed \S+ (22|7) request$/);
    assert.equal(existsSync(marker), false, "nothing ran");
  });

  it("reports a failed exec or chdir with its errno and step, and the exit of what it started", () => {
    const lines = [
      `spawn b1 0 - - ${hex("/")} 1 ${hex("no-such-command-here")} 1 ${hex("PATH=/usr/bin:/bin")}`,
      `spawn b2 0 - - ${hex("/no/such/dir")} 1 ${hex("/bin/true")} 0`,
      `spawn b3 0 - - ${hex("/")} 3 ${hex("sh")} ${hex("-c")} ${hex("exit 7")} 1 ${hex("PATH=/usr/bin:/bin")}`,
    ];
    // Keep stdin open a moment so the exit line of b3 is still written.
    const result = spawnSync("sh", ["-c", `(printf '%s\\n' "$@"; sleep 0.5) | ${helper} --serve`, "sh", ...lines]);
    const answers = result.stdout.toString().trim().split("\n");
    assert.equal(answers[0], "failed b1 2 exec");
    assert.equal(answers[1], "failed b2 2 chdir");
    const spawned = /^spawned b3 (\d+) -1 \d+ \d+$/.exec(answers[2] ?? "");
    assert.ok(spawned, answers.join(" | "));
    assert.equal(answers[3], `exit ${spawned[1]} 7 0`);
  });

  it("starts commands with an OOM score adjustment of 0, whatever its own", () => {
    // In the guest the helper runs with -1000; lowering needs CAP_SYS_RESOURCE, which a test host may not grant,
    // so the helper runs with 500 here: the command must still come out at 0.
    const check = `3 ${hex("sh")} ${hex("-c")} ${hex('test "$(cat /proc/self/oom_score_adj)" = 0')} 1 ${hex("PATH=/usr/bin:/bin")}`;
    const script = `echo 500 > /proc/self/oom_score_adj && (printf '%s\\n' "$1"; sleep 0.5) | ${helper} --serve`;
    const result = spawnSync("sh", ["-c", script, "sh", `spawn c1 0 - - ${hex("/")} ${check}`]);
    const answers = result.stdout.toString().trim().split("\n");
    const spawned = /^spawned c1 (\d+) -1 \d+ \d+$/.exec(answers[0] ?? "");
    assert.ok(spawned, answers.join(" | ") + result.stderr.toString());
    assert.equal(answers[1], `exit ${spawned[1]} 0 0`, "the command saw oom_score_adj 0");
  });

  it("kills the process groups of the commands still running when the agent goes away (stdin closes)", async () => {
    const pidFile = join(dir, "grandchild.pid");
    // A command that leaves a grandchild in its process group, then waits.
    const command = `3 ${hex("sh")} ${hex("-c")} ${hex(`sleep 300 & echo $! > ${pidFile}; wait`)} 1 ${hex("PATH=/usr/bin:/bin")}`;
    const result = spawnSync("sh", ["-c", `(printf '%s\\n' "$1"; sleep 0.5) | ${helper} --serve`, "sh", `spawn k1 0 - - ${hex("/")} ${command}`]);
    assert.match(result.stdout.toString(), /^spawned k1 \d+/);
    const grandchild = Number((await readFile(pidFile, "utf8")).trim());
    assert.ok(grandchild > 0);
    let alive = true;
    for (let i = 0; i < 100 && alive; i++) {
      try {
        process.kill(grandchild, 0);
        await new Promise((resolve) => setTimeout(resolve, 20));
      } catch {
        alive = false;
      }
    }
    assert.equal(alive, false, "the command's grandchild was killed with its group");
  });

  it("refuses malformed terminal requests and resizes of terminals it does not have", () => {
    const shell = `3 ${hex("sh")} ${hex("-c")} ${hex("exit 0")} 0`;
    const malformed = [
      `spawn-pty c1 0 0 80 - - ${hex("/")} ${shell}`, // rows from 1
      `spawn-pty c2 0 24 65536 - - ${hex("/")} ${shell}`, // cols fit an unsigned short
      `spawn-pty c3 0 24 x - - ${hex("/")} ${shell}`,
      `spawn-pty c4 0 24 - - ${hex("/")} ${shell}`, // a field short
      "resize r1 c5 24",
      "resize r2 c5 0 80",
      "resize r3 bad_id! 24 80",
      "resize r4 c5 24 80 extra",
    ];
    const result = spawnSync(helper, ["--serve"], { input: [...malformed, "resize r5 c5 24 80"].map((line) => `${line}\n`).join("") });
    assert.equal(result.status, 0, result.stderr.toString());
    const answers = result.stdout.toString().trim().split("\n");
    assert.equal(answers.length, malformed.length + 1, result.stdout.toString());
    for (const answer of answers.slice(0, -1)) assert.match(answer, /^failed (c|r)\d 22 request$/);
    assert.equal(answers.at(-1), "failed r5 2 resize", "ENOENT: no terminal with that id");
  });
});

// The identity refresh, background commands and terminals in a real QEMU guest (no mocks): the helper really sets
// the guest's clock and reseeds its CRNG, a background command really outlives the host's agent session, and a
// shell gets a terminal from the guest's own devpts. One VM for all.
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { after, before, describe, it } from "node:test";
import { ensureGuestImage } from "../images/guest-image.js";
import { Vm } from "../vmm/vm.js";
import { AgentDisconnectedError, createIdentityRequest, type CommandHandle } from "./index.js";

const hourMs = 60 * 60 * 1000;
/** Slack for the time between the host's clock reading and the guest's `date` (TCG guests are slow). */
const clockToleranceS = 30;

/** Reads the command's stdout until it has printed `count` more lines, and returns them. */
async function nextLines(command: CommandHandle, count: number): Promise<string[]> {
  let text = "";
  for await (const chunk of command.stdout) {
    text += String(chunk);
    const lines = text.split("\n").slice(0, -1);
    if (lines.length >= count) return lines;
  }
  throw new Error(`output ended after ${JSON.stringify(text)}`);
}

describe("agent in a real guest: identity refresh, background commands and terminals", () => {
  let vm: Vm;

  before(async () => {
    vm = await Vm.boot({ image: await ensureGuestImage(), memoryMiB: 256 });
  });

  after(async () => {
    await vm?.stop();
  });

  it("sets the clock, hostname and machine id and reseeds the CRNG", async () => {
    const request = createIdentityRequest({ hostname: "clone-test-1", epochMs: Date.now() + hourMs });
    const result = await vm.agent.refreshIdentity(request);
    assert.deepEqual(result, {
      clockSetTo: request.epochMs,
      reseeded: true,
      hostname: "clone-test-1",
      machineId: request.machineId,
      machineIdWritten: true,
    });

    const guest = await vm.agent.run({ shell: "date +%s; hostname; cat /etc/machine-id; grep '^127.0.1.1' /etc/hosts" });
    assert.equal(guest.exitCode, 0, guest.stderr.toString());
    const [seconds, hostname, machineId, hostsLine] = guest.stdout.toString().trim().split("\n");
    assert.equal(hostsLine, "127.0.1.1\tclone-test-1", "/etc/hosts names the new hostname");
    const expectedS = (Date.now() + hourMs) / 1000;
    assert.ok(Math.abs(Number(seconds) - expectedS) < clockToleranceS, `guest clock ${seconds}, expected about ${expectedS}`);
    assert.equal(hostname, "clone-test-1");
    assert.equal(machineId, request.machineId);

    await assert.rejects(vm.agent.refreshIdentity({ ...request, hostname: "not a hostname" }), {
      name: "AgentError",
      code: "bad_request",
    });
    assert.equal((await vm.agent.run({ argv: ["hostname"] })).stdout.toString(), "clone-test-1\n", "unchanged");
  });

  it("keeps a background command running across a reconnect and re-attaches to it", async () => {
    const counter = vm.agent.exec({ shell: "i=0; while true; do echo $i; i=$((i+1)); sleep 0.2; done", background: true });
    const id = await counter.id;
    const before = (await nextLines(counter, 2)).map(Number);
    assert.deepEqual(before, [0, 1]);

    const client = await vm.reconnectAgent();
    await assert.rejects(counter.wait(), AgentDisconnectedError, "the old session's handle is gone");
    const listed = (await client.listCommands()).find((command) => command.id === id);
    assert.equal(listed?.running, true);

    const attached = client.attach(id);
    const after = (await nextLines(attached, 3)).map(Number);
    assert.ok(after[0]! > 1, `the counter went on while detached instead of restarting: ${after.join(",")}`);
    assert.deepEqual(after, [after[0]!, after[0]! + 1, after[0]! + 2], "consecutive output after attaching");

    await attached.kill("SIGKILL");
    const exit = await attached.wait();
    assert.equal(exit.signal, "SIGKILL");
    const exited = (await client.listCommands()).find((command) => command.id === id);
    assert.deepEqual(exited?.exit, exit);
  });

  it("runs an interactive shell on a terminal of the guest, and resizes it", async () => {
    const keyboard = new PassThrough();
    const shell = vm.agent.exec({ argv: ["/bin/sh"], env: { PS1: "prompt> " }, pty: { rows: 24, cols: 80 } }, { stdin: keyboard });
    let screen = "";
    shell.stdout.on("data", (chunk: Buffer) => (screen += chunk.toString()));
    const shows = async (pattern: RegExp) => {
      for (let waited = 0; !pattern.test(screen); waited += 20) {
        assert.ok(waited < 30_000, `never showed ${pattern}: ${JSON.stringify(screen)}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    };
    // Typed before the shell's first prompt: the terminal echoes it at once and the prompt may come after the
    // echo, right before the output.
    keyboard.write("tty; stty size; echo $TERM\n");
    await shows(/^(?:prompt> )?\/dev\/pts\/\d+\r\n24 80\r\nxterm-256color\r$/m);
    await shell.resize(50, 132);
    keyboard.write("stty size; exit 4\n");
    await shows(/^(?:prompt> )?50 132\r$/m);
    assert.equal((await shell.wait()).exitCode, 4);
  });
});

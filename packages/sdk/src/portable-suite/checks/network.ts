// sandbox.network: policy changes, a refused entry, and the event stream (NDJSON read with web streams only). No
// destination is dialled: a name the policy does not allow is asked of the sandbox's DNS, which refuses it.
import { BadRequestError } from "../../index.js";
import { assertEqual, assertOk, assertRejects, mainSandbox, type Check } from "../harness.js";

export const networkChecks: Check[] = [
  {
    name: "network: allow / deny / remove change the policy; a bad entry is refused and changes nothing",
    async run(context) {
      const sandbox = mainSandbox(context);
      assertEqual((await sandbox.network.policy()).allow.length, 0, "a base sandbox starts with nothing allowed");
      await sandbox.network.allow("registry.example.test", "*.pkgs.example.test:443");
      await sandbox.network.deny("bad.pkgs.example.test");
      const policy = await sandbox.network.remove(["registry.example.test"]);
      assertEqual(JSON.stringify([policy.allow, policy.deny]), JSON.stringify([["*.pkgs.example.test:443"], ["bad.pkgs.example.test"]]), "the policy");
      await assertRejects(sandbox.network.allow("::1"), BadRequestError, "an IPv6 entry");
      assertEqual((await sandbox.network.state()).policy.allow.length, 1, "the refused change left the policy as it was");
      await sandbox.network.policy({});
    },
  },
  {
    name: "network: a refused DNS question shows up in events()",
    async run(context) {
      const sandbox = mainSandbox(context);
      const name = `${context.runId.toLowerCase().replace(/[^a-z0-9-]/g, "-")}.example.test`;
      const lookup = await sandbox.runCommand(["getent", "hosts", name]);
      assertOk(lookup.exitCode !== 0, `${name} did not resolve`);
      let found = false;
      for await (const event of sandbox.network.events()) {
        if (event.type === "network.dns" && event.name === name && !event.allowed) found = true;
      }
      assertOk(found, `an event for the refused question about ${name}`);
    },
  },
];

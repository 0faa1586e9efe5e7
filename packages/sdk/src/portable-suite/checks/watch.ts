// File watching: the event stream is read with fetch's web streams and closed by aborting it, which each runtime
// implements on its own.
import type { WatchEvent } from "../../index.js";
import { assertEqual, assertOk, mainSandbox, type Check } from "../harness.js";

const DIR = "suite-watch";

export const watchChecks: Check[] = [
  {
    name: "files.watch: nested creates made by a command arrive, close ends the watch",
    async run(context) {
      const sandbox = mainSandbox(context);
      await sandbox.runCommand(["mkdir", "-p", DIR], { check: true });
      const events: WatchEvent[] = [];
      const watch = await sandbox.files.watch(DIR, { recursive: true }, (event) => events.push(event));
      await sandbox.runCommand(`mkdir -p ${DIR}/a/b && touch ${DIR}/a/b/f`, { check: true });
      const wanted = `/root/${DIR}/a/b/f`;
      const deadline = Date.now() + 20_000;
      while (!events.some((event) => event.type === "create" && event.path === wanted)) {
        assertOk(Date.now() < deadline, `no create event for ${wanted}; saw ${JSON.stringify(events)}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      assertOk(events.some((event) => event.type === "create" && event.path === `/root/${DIR}/a` && event.isDirectory), "the directory's create");
      await watch.close();
      await watch.done;
      const seen = events.length;
      await sandbox.runCommand(["touch", `${DIR}/after-close`], { check: true });
      await new Promise((resolve) => setTimeout(resolve, 300));
      assertEqual(events.length, seen, "no events after close");
    },
  },
];

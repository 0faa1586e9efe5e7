import { Command } from "commander";
import { registerVmCommands } from "./commands/vm.js";
import { registerInfoCommand } from "./commands/info.js";
import { registerKeysCommands } from "./commands/keys.js";
import { registerTenantCommands } from "./commands/tenants.js";
import { registerSandboxCommands } from "./commands/sandboxes.js";
import { registerExecCommand } from "./commands/exec.js";
import { registerShellCommand } from "./commands/shell.js";
import { registerLogsCommand } from "./commands/logs.js";
import { registerCopyCommand } from "./commands/cp.js";
import { registerServerCommand } from "./commands/server.js";
import { registerSnapshotCommands } from "./commands/snapshots.js";
import { registerNetworkCommands } from "./commands/network.js";
import { fail } from "./progress.js";
import { restrictUmask } from "@codecourier/engine";

// What the CLI makes in the data dir (control.db by `keys`, VM files by `vm run`) is this user's only (0600/0700).
restrictUmask();

const program = new Command()
  .name("codecourier")
  .description("Give every AI agent its own Linux microVM")
  .version("0.1.0")
  .showHelpAfterError()
  // Usage errors (commander has printed them) exit 2; --help and --version 0. Inherited by every command below.
  .exitOverride((error) => process.exit(error.exitCode === 0 ? 0 : 2))
  .addHelpText(
    "after",
    "\nSandbox commands talk to a CodeCourier server (`npm start`): --url and --api-key, or CODECOURIER_URL and\n" +
      "CODECOURIER_API_KEY (create a key on the server's host with `codecourier keys create --tenant NAME`).",
  );

registerServerCommand(program);
registerSandboxCommands(program);
registerExecCommand(program);
registerShellCommand(program);
registerLogsCommand(program);
registerCopyCommand(program);
registerSnapshotCommands(program);
registerNetworkCommands(program);
registerVmCommands(program);
registerInfoCommand(program);
registerKeysCommands(program);
registerTenantCommands(program);

try {
  await program.parseAsync(process.argv);
} catch (error) {
  // SDK errors (NotFoundError, AuthError, QuotaError, …) carry a message meant for people: that is all we print.
  if (process.env.CODECOURIER_DEBUG && error instanceof Error) process.stderr.write(`${error.stack}\n`);
  fail(error instanceof Error ? error.message : String(error), 1);
}

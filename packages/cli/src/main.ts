import { Command } from "commander";
import { registerVmCommands } from "./commands/vm.js";
import { registerInfoCommand } from "./commands/info.js";
import { registerKeysCommands } from "./commands/keys.js";

const program = new Command()
  .name("codecourier")
  .description("Give every AI agent its own Linux microVM")
  .version("0.1.0")
  .showHelpAfterError();

registerVmCommands(program);
registerInfoCommand(program);
registerKeysCommands(program);

await program.parseAsync(process.argv);

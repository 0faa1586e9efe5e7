import type { Command } from "commander";
import { finished } from "node:stream/promises";
import { ensureGuestImage, withGuestImageUmask, Vm, VmError } from "@codecourier/engine";
import { signalExitCode } from "../exit-status.js";
import { collectKeyValues, parsePositiveInt } from "../parse.js";
import { fail, progress } from "../progress.js";

export function registerVmCommands(program: Command): void {
  const vm = program.command("vm").description("Run throwaway microVMs directly on this host (no server needed)");
  vm.command("run")
    .description("Boot a VM from the base image, run a command in it, stream its output and tear the VM down")
    .option("-m, --memory <MB>", "guest memory in MiB", parsePositiveInt("memory"), 512)
    .option("-c, --cpus <N>", "virtual CPUs", parsePositiveInt("cpus"), 1)
    .option("--shell", "run the arguments as one /bin/sh -c command line")
    .option("--cwd <dir>", "working directory in the guest", "/root")
    .option("-e, --env <KEY=VALUE...>", "environment variables for the command", collectKeyValues("env"))
    .argument("<command...>", "the command and its arguments (after --)")
    .action(async (command: string[], opts: { memory: number; cpus: number; shell?: boolean; cwd: string; env?: Record<string, string> }) => {
      const started = Date.now();
      const image = await withGuestImageUmask(() => ensureGuestImage((line) => progress(line)));
      let machine: Vm;
      try {
        machine = await Vm.boot({ image, memoryMiB: opts.memory, cpus: opts.cpus });
      } catch (error) {
        fail(error instanceof VmError ? error.message : String(error));
      }
      progress(`${machine.id} ready in ${Date.now() - started} ms (accelerator: ${machine.accel}, kernel ${image.kernelVersion})`);
      const stop = () => void machine.stop().finally(() => process.exit(130));
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
      let exitCode = 1;
      try {
        const forwardStdin = !process.stdin.isTTY;
        const handle = machine.agent.exec(
          {
            ...(opts.shell ? { shell: command.join(" ") } : { argv: command }),
            env: opts.env ?? {},
            cwd: opts.cwd,
            stdin: forwardStdin,
          },
          forwardStdin ? { stdin: process.stdin } : {},
        );
        handle.stdout.pipe(process.stdout);
        handle.stderr.pipe(process.stderr);
        const exit = await handle.wait();
        // Output may still be in flight to our stdout/stderr when the exit record arrives; a stream error was
        // already reported by wait(), so it does not matter here.
        await Promise.all([finished(handle.stdout).catch(() => {}), finished(handle.stderr).catch(() => {})]);
        if (exit.spawnError) process.stderr.write(`codecourier: ${exit.spawnError}\n`);
        exitCode = exit.exitCode ?? signalExitCode(exit.signal ?? "SIGKILL");
      } catch (error) {
        process.stderr.write(`codecourier: ${(error as Error).message}\n`);
      } finally {
        await machine.stop();
      }
      process.exit(exitCode);
    });
}


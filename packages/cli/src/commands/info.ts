import type { Command } from "commander";
import { chooseAccelerator, dataDir, ensureGuestImage, withGuestImageUmask } from "@codecourier/engine";
import { progress } from "../progress.js";

export function registerInfoCommand(program: Command): void {
  program
    .command("info")
    .description("Show the accelerator this host uses, the guest image and the data directory")
    .option("--json", "print JSON")
    .action(async (opts: { json?: boolean }) => {
      const image = await withGuestImageUmask(() => ensureGuestImage((line) => progress(line)));
      const accel = await chooseAccelerator(image);
      const info = { accel: accel.accel, accelReason: accel.reason, image: image.id, kernel: image.kernelVersion, dataDir: dataDir() };
      if (opts.json) console.log(JSON.stringify(info, null, 2));
      else for (const [key, value] of Object.entries(info)) console.log(`${key.padEnd(12)} ${value}`);
    });
}

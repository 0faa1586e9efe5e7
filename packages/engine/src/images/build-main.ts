/** Entry point used by the set-up script: builds (or finds cached) guest images and prints progress. */
import { ensureGuestImage } from "./guest-image.js";

const started = Date.now();
try {
  const image = await ensureGuestImage((line) => process.stderr.write(`  images: ${line}\n`));
  process.stderr.write(`  images: ready (${image.id}, kernel ${image.kernelVersion}) in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
} catch (error) {
  process.stderr.write(`\nGuest image build failed: ${(error as Error).message}\n`);
  process.exit(1);
}

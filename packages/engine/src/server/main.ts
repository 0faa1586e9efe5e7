/** `npm start`: the CodeCourier server on its embedded defaults (local disk under CODECOURIER_HOME). */
import { dataDir, serverPort } from "../config.js";
import { ensureGuestImage } from "../images/guest-image.js";
import { chooseAccelerator } from "../vmm/accel.js";
import { buildApp } from "./app.js";

const image = await ensureGuestImage((line) => process.stderr.write(`images: ${line}\n`));
const accel = await chooseAccelerator(image);
const app = buildApp({ accel, image });
const port = serverPort();
await app.listen({ host: "127.0.0.1", port });
process.stderr.write(
  `CodeCourier listening on http://127.0.0.1:${port} (accelerator: ${accel.accel} — ${accel.reason}; data: ${dataDir()})\n`,
);
const shutdown = () => void app.close().finally(() => process.exit(0));
process.once("SIGINT", shutdown);
process.once("SIGTERM", shutdown);

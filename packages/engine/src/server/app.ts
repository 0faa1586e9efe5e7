import Fastify, { type FastifyInstance } from "fastify";
import { ENGINE_VERSION } from "../config.js";
import type { AcceleratorChoice } from "../vmm/accel.js";
import type { GuestImage } from "../images/guest-image.js";

export interface EngineInfo {
  accel: AcceleratorChoice;
  image: GuestImage;
}

/** The HTTP API. At this stage: health, which also says which accelerator this host runs VMs with. */
export function buildApp(info: EngineInfo): FastifyInstance {
  const app = Fastify({ logger: false, bodyLimit: 1024 * 1024 });
  app.get("/health", async () => ({
    ok: true,
    version: ENGINE_VERSION,
    accel: info.accel.accel,
    accelReason: info.accel.reason,
    image: { id: info.image.id, kernel: info.image.kernelVersion },
  }));
  return app;
}

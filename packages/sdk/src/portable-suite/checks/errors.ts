// Typed errors from real server answers. None of these starts a VM: each request is refused before one would.
import { AuthError, BadRequestError, NotFoundError, Sandbox, SandboxGoneError, createSandbox, listSandboxes } from "../../index.js";
import { assertEqual, assertOk, assertRejects, type Check } from "../harness.js";

export const errorChecks: Check[] = [
  {
    name: "a bad API key is an AuthError (401)",
    async run({ connection }) {
      const error = await assertRejects(listSandboxes({}, { url: connection.url, apiKey: "cc_not-a-real-key" }), AuthError, "listSandboxes with a bad key");
      assertEqual(error.status, 401, "status");
      assertEqual(error.code, "unauthorized", "code");
    },
  },
  {
    name: "an unknown sandbox id is a NotFoundError (404), not SandboxGoneError",
    async run({ connection }) {
      const error = await assertRejects(Sandbox.get("sb_no-such-sandbox", connection), NotFoundError, "Sandbox.get of an unknown id");
      assertOk(!(error instanceof SandboxGoneError), `an id that never existed is not "gone": ${error.name}`);
      assertEqual(error.status, 404, "status");
      assertEqual(error.code, "not_found", "code");
      await assertRejects(Sandbox.connect("sb_no-such-sandbox", connection), NotFoundError, "Sandbox.connect of an unknown id");
    },
  },
  {
    name: "cpu 0 is a BadRequestError (400) naming the field",
    async run({ connection }) {
      const error = await assertRejects(createSandbox({ ...connection, cpu: 0 }), BadRequestError, "createSandbox({ cpu: 0 })");
      assertEqual(error.status, 400, "status");
      assertEqual(error.code, "bad_request", "code");
      assertOk(/cpu/.test(error.message), `the message names the field: ${error.message}`);
    },
  },
];

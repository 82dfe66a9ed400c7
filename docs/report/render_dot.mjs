// Graphviz (the WebAssembly build in @viz-js/viz) as a command: DOT on stdin,
// SVG on stdout. docs/report/build.py draws the architecture diagram with it,
// so no system Graphviz is needed.
import { instance } from "@viz-js/viz";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const viz = await instance();
const result = viz.render(Buffer.concat(chunks).toString("utf8"), {
  format: "svg",
  engine: "dot",
});
if (result.status !== "success") {
  for (const error of result.errors) console.error(`${error.level}: ${error.message}`);
  process.exit(1);
}
process.stdout.write(result.output);

// The API reference: Swagger UI (vendored) over this server's /openapi.json.
const root = document.getElementById("docs");
window.SwaggerUIBundle({
  url: root.dataset.url,
  domNode: root,
  deepLinking: true,
  // No call to the public validator service: this page talks to this server alone.
  validatorUrl: null,
  defaultModelsExpandDepth: 0,
  docExpansion: "list",
});

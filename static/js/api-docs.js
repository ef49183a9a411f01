// Swagger UI for /api/v1/openapi.json, without inline script (strict CSP).
window.addEventListener("DOMContentLoaded", function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.SwaggerUIBundle({ url: root.getAttribute("data-openapi-url"), dom_id: "#swagger-ui", deepLinking: true });
});

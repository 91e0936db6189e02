// Swagger UI over this server's OpenAPI document (vendored: swagger-ui-dist, Apache-2.0).
"use strict";
(function () {
  const el = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({ url: el.dataset.url, dom_id: "#swagger-ui", deepLinking: true });
})();

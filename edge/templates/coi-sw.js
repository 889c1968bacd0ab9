// gencompress bundle: makes the page cross-origin isolated where it is served.
// onnxruntime-web runs its wasm kernels on several threads only with SharedArrayBuffer, which a
// browser grants only to a cross-origin-isolated page (COOP + COEP response headers). Most static
// hosts cannot set headers, so this worker adds them to the bundle's own (same-origin) responses;
// index.html registers it and reloads once so that the page itself comes through it.
"use strict";

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (new URL(request.url).origin !== self.location.origin) return;  // not ours: the browser's default
  if (request.cache === "only-if-cached" && request.mode !== "same-origin") return;  // would throw in fetch()
  event.respondWith(fetch(request).then((response) => {
    if (response.type === "opaque" || response.status === 0) return response;
    const headers = new Headers(response.headers);
    headers.set("Cross-Origin-Opener-Policy", "same-origin");
    headers.set("Cross-Origin-Embedder-Policy", "require-corp");
    headers.set("Cross-Origin-Resource-Policy", "same-origin");
    return new Response(response.body, {status: response.status, statusText: response.statusText, headers});
  }));
});

"""``finesteer-edge serve``: an OpenAI-compatible local HTTP server with per-request, gated steering.

Needs the ``serve`` extra (FastAPI, uvicorn, sse-starlette); ``import finesteer_edge`` never imports this
package, so the runtime stays free of web dependencies.

Modules, one job each: ``schemas`` (request models, response shapes), ``steering`` (a request's
``steering`` field -> settings for one turn), ``slots`` (the pool of llama.cpp contexts on one loaded
model), ``engine`` (load and verify model and packs at start-up), ``errors`` (OpenAI-style error
bodies), ``app`` (the routes).
"""

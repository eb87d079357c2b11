"""The HTTP plumbing of pgn's two web servers, the model server (:mod:`pgn.server`) and the page app
(:mod:`pgn.client.app`): bounded image uploads, where a server listens (loopback by default), uvicorn's
protocol with pgn's one-line JSON errors, and a background server for tests and benchmarks."""

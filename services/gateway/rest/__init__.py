"""The gateway's REST door: the TMS's HTTP/JSON API transcoded from the protos (OpenAPI, JWT auth, rate limits,
Server-Sent Events) and the trucks' device ingest listener. No business rules: every request becomes a gRPC
call to the service that owns them."""

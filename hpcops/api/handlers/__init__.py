"""The API's request handlers, by group; `hpcops.api.server.Api` dispatches to them."""

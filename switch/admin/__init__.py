"""The admin side of the switch: the HTTP server (metrics, health, public catalogue, admin
API), its routes, request schemas, operator tokens and their guard, disbursements, and the
operators' command line."""

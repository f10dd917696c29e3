"""The handlers of resource requests, one module per verb family, as k8s.io/apiserver's
`endpoints/handlers`: `read` (get, list, Tables), `write` (create, update, delete,
deletecollection), `patch` (the four patch types, server-side apply included), `watch`, and
`subresource` (status, scale, finalize); `resource` routes a resolved request to them and
`discovery` answers the API's self-description.

Layer: api. Handlers see the server only through `HandlerContext` (`context`): they never
import `haplane.api.server`, and the server imports them (checked by import-linter).
"""

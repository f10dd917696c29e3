"""Layer: api. The Kubernetes-compatible API server: discovery, resources, storage on etcd, the
filter chain, health and metrics. May use the store and model layers; never the run layer.
"""

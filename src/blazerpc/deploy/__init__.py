"""`blaze deploy`: a Dockerfile and Kubernetes manifests generated from the app and its flags.

`spec` gathers what the manifests need once (model names, ports, drain timing); `kubernetes`,
`kserve` and `docker` turn that one spec into plain data, and `cli` writes it out.
"""

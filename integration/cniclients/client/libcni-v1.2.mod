module github.com/wgmesh/wgmesh/integration/cniclients/client

go 1.26.8

require github.com/containernetworking/cni v1.2.3

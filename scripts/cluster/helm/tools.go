//go:build tools

// Package tools pins the helm command that scripts/cluster.sh builds (helm.sh/helm/v3/cmd/helm).
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)

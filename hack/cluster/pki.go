package cluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki is the local cluster's certificate authority and the files made from it:
// the API server's serving certificate (valid for every address it is reached
// at: the LAN address, the host forwarder, the kubernetes Service's ClusterIPs),
// an admin client certificate, and the service-account signing key.
type pki struct {
	dir string
	ca  *x509.Certificate
	key crypto.Signer
}

// File names under the PKI directory.
const (
	caCert       = "ca.crt"
	caKey        = "ca.key"
	serverCert   = "apiserver.crt"
	serverKey    = "apiserver.key"
	adminCert    = "admin.crt"
	adminKey     = "admin.key"
	saSigningKey = "sa.key"
	saPublicKey  = "sa.pub"
)

func newPKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kpo-local-cluster-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	p := &pki{dir: dir, ca: ca, key: key}
	if err := p.writeCert(caCert, der); err != nil {
		return nil, err
	}
	if err := p.writeKey(caKey, key); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

// issue signs a certificate for a new key and writes both.
func (p *pki) issue(certName, keyName string, subject pkix.Name, usage x509.ExtKeyUsage, dns []string, ips []net.IP) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, key.Public(), p.key)
	if err != nil {
		return err
	}
	if err := p.writeCert(certName, der); err != nil {
		return err
	}
	return p.writeKey(keyName, key)
}

// writeAll issues every certificate and key the control plane needs.
func (p *pki) writeAll(serverIPs []string) error {
	var ips []net.IP
	for _, s := range serverIPs {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("server address %q is not an IP", s)
		}
		ips = append(ips, ip)
	}
	dns := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	if err := p.issue(serverCert, serverKey, pkix.Name{CommonName: "kube-apiserver"}, x509.ExtKeyUsageServerAuth, dns, ips); err != nil {
		return err
	}
	// system:masters: the admin of the local cluster (kubectl, the controller
	// manager, the scheduler and the node runtimes).
	admin := pkix.Name{CommonName: "kpo-admin", Organization: []string{"system:masters"}}
	if err := p.issue(adminCert, adminKey, admin, x509.ExtKeyUsageClientAuth, nil, nil); err != nil {
		return err
	}
	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	if err := p.writeKey(saSigningKey, sa); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(sa.Public())
	if err != nil {
		return err
	}
	return os.WriteFile(p.path(saPublicKey), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600)
}

func (p *pki) writeCert(name string, der []byte) error {
	return os.WriteFile(p.path(name), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func (p *pki) writeKey(name string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(p.path(name), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

// issueNode issues kubelet's client certificate for node name
// (system:node:<name> in system:nodes: the Node authorizer's and the
// NodeRestriction admission plugin's subject) and returns its file names.
func (p *pki) issueNode(name string) (cert, key string, err error) {
	cert, key = "node-"+name+".crt", "node-"+name+".key"
	subject := pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}}
	return p.path(cert), p.path(key), p.issue(cert, key, subject, x509.ExtKeyUsageClientAuth, nil, nil)
}

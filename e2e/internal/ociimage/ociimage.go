// Package ociimage writes a single-layer OCI image layout as a tar archive that
// `ctr images import` accepts. It exists so that the e2e suite needs no registry:
// the pause image and the VMM test image are built from local static binaries.
package ociimage

import (
	"archive/tar"
	"bytes"
	_ "crypto/sha256" // registers sha256 for go-digest
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// File is one regular file of the image's only layer.
type File struct {
	Path string // absolute path inside the image, e.g. "/pause"
	Mode int64  // permission bits, e.g. 0o755
	Data []byte
}

// Image describes the image to write.
type Image struct {
	Name       string // full reference, e.g. "localhost/vmnic-e2e/pause:1"
	Files      []File
	Entrypoint []string
	Cmd        []string
	Env        []string
}

// epoch keeps the output reproducible: same inputs, same digests.
var epoch = time.Unix(0, 0).UTC()

// Write writes img as an OCI image layout tar archive to w.
func Write(w io.Writer, img Image) error {
	if img.Name == "" {
		return fmt.Errorf("image name is empty")
	}
	layer, err := layerTar(img.Files)
	if err != nil {
		return fmt.Errorf("layer of %s: %w", img.Name, err)
	}
	layerDigest := digest.FromBytes(layer)

	cfg := v1.Image{
		Created:  &epoch,
		Platform: v1.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		Config: v1.ImageConfig{
			Entrypoint: img.Entrypoint,
			Cmd:        img.Cmd,
			Env:        img.Env,
			WorkingDir: "/",
		},
		RootFS: v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{layerDigest}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("config of %s: %w", img.Name, err)
	}
	cfgDesc := v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: digest.FromBytes(cfgJSON), Size: int64(len(cfgJSON))}
	layerDesc := v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: layerDigest, Size: int64(len(layer))}

	manifest := v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
		Config:    cfgDesc,
		Layers:    []v1.Descriptor{layerDesc},
	}
	manifestJSON, err := json.Marshal(manifest)
	if err != nil {
		return fmt.Errorf("manifest of %s: %w", img.Name, err)
	}
	tag := "latest"
	if i := strings.LastIndex(img.Name, ":"); i > strings.LastIndex(img.Name, "/") {
		tag = img.Name[i+1:]
	}
	index := v1.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType: v1.MediaTypeImageManifest,
			Digest:    digest.FromBytes(manifestJSON),
			Size:      int64(len(manifestJSON)),
			Platform:  &v1.Platform{Architecture: runtime.GOARCH, OS: "linux"},
			Annotations: map[string]string{
				// containerd's importer names the image after this annotation.
				"io.containerd.image.name": img.Name,
				v1.AnnotationRefName:       tag,
			},
		}},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return fmt.Errorf("index of %s: %w", img.Name, err)
	}
	layoutJSON, err := json.Marshal(v1.ImageLayout{Version: v1.ImageLayoutVersion})
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
			return err
		}
	}
	entries := []struct {
		name string
		data []byte
	}{
		{v1.ImageLayoutFile, layoutJSON},
		{"index.json", indexJSON},
		{blobPath(digest.FromBytes(manifestJSON)), manifestJSON},
		{blobPath(cfgDesc.Digest), cfgJSON},
		{blobPath(layerDigest), layer},
	}
	for _, e := range entries {
		if err := writeFile(tw, e.name, 0o644, e.data); err != nil {
			return fmt.Errorf("write %s: %w", e.name, err)
		}
	}
	return tw.Close()
}

// WriteFile writes img to the file at p (atomically: temp file and rename).
func WriteFile(p string, img Image) error {
	var buf bytes.Buffer
	if err := Write(&buf, img); err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	return os.Rename(tmp, p)
}

func blobPath(d digest.Digest) string {
	return "blobs/" + d.Algorithm().String() + "/" + d.Encoded()
}

// layerTar returns an uncompressed layer holding files and their parent directories.
func layerTar(files []File) ([]byte, error) {
	dirs := map[string]bool{}
	for _, f := range files {
		if !path.IsAbs(f.Path) {
			return nil, fmt.Errorf("path %q is not absolute", f.Path)
		}
		for d := path.Dir(f.Path); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	sortedDirs := make([]string, 0, len(dirs))
	for d := range dirs {
		sortedDirs = append(sortedDirs, d)
	}
	sort.Strings(sortedDirs)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range sortedDirs {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	sorted := append([]File(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	for _, f := range sorted {
		if err := writeFile(tw, strings.TrimPrefix(f.Path, "/"), f.Mode, f.Data); err != nil {
			return nil, fmt.Errorf("add %s: %w", f.Path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeFile(tw *tar.Writer, name string, mode int64, data []byte) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: epoch}); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

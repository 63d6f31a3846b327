// Command ocibuild writes a one-layer OCI image, built from local files, as a
// `docker save` archive that `ctr images import` reads: the lab's images
// (pause, agnhost, wgmesh) exist without a registry or a Docker engine.
//
//	ocibuild -o OUT.tar -ref NAME:TAG [-entrypoint a,b] [-user 0:0] DST=SRC... DST->TARGET...
//
// DST=SRC copies the file SRC to DST in the image (mode kept); DST->TARGET
// makes a symlink. Parent directories are created. Timestamps are zero, so
// the same inputs give the same image digest.
package main

import (
	"archive/tar"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

type entry struct {
	dst, src, link string
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ocibuild:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("ocibuild", flag.ContinueOnError)
	out := fs.String("o", "", "output archive")
	ref := fs.String("ref", "", "image reference, e.g. registry.k8s.io/pause:3.10.2")
	entrypoint := fs.String("entrypoint", "", "comma-separated entrypoint")
	user := fs.String("user", "", "config User")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || *ref == "" || fs.NArg() == 0 {
		return errors.New("usage: ocibuild -o OUT.tar -ref NAME:TAG [-entrypoint a,b] [-user U] DST=SRC|DST->TARGET ...")
	}
	tag, err := name.NewTag(*ref, name.WeakValidation)
	if err != nil {
		return fmt.Errorf("parse ref: %w", err)
	}
	var entries []entry
	for _, a := range fs.Args() {
		if dst, target, ok := strings.Cut(a, "->"); ok {
			entries = append(entries, entry{dst: dst, link: target})
			continue
		}
		dst, src, ok := strings.Cut(a, "=")
		if !ok {
			return fmt.Errorf("%q: want DST=SRC or DST->TARGET", a)
		}
		entries = append(entries, entry{dst: dst, src: src})
	}
	layerFile, err := os.CreateTemp("", "ocibuild-layer-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(layerFile.Name())
	if err := writeLayer(layerFile, entries); err != nil {
		layerFile.Close()
		return err
	}
	if err := layerFile.Close(); err != nil {
		return err
	}
	layer, err := tarball.LayerFromFile(layerFile.Name())
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", goarch()
	cf.Config.User = *user
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if *entrypoint != "" {
		cf.Config.Entrypoint = strings.Split(*entrypoint, ",")
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	img = mutate.MediaType(img, "application/vnd.docker.distribution.manifest.v2+json")
	if err := tarball.WriteToFile(*out, tag, img); err != nil {
		return fmt.Errorf("write %s: %w", *out, err)
	}
	d, _ := img.Digest()
	fmt.Printf("ocibuild: %s -> %s (%s)\n", tag, *out, d)
	return nil
}

// writeLayer writes the entries as a tar stream: parent directories first,
// then files and links in path order.
func writeLayer(w io.Writer, entries []entry) error {
	tw := tar.NewWriter(w)
	dirs := map[string]bool{}
	for _, e := range entries {
		for d := path.Dir(path.Clean("/" + e.dst)); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var dl []string
	for d := range dirs {
		dl = append(dl, d)
	}
	sort.Strings(dl)
	var zero time.Time
	for _, d := range dl {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, ModTime: zero}); err != nil {
			return err
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].dst < entries[j].dst })
	for _, e := range entries {
		nm := strings.TrimPrefix(path.Clean("/"+e.dst), "/")
		if e.link != "" {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: nm, Linkname: e.link, Mode: 0o777, ModTime: zero}); err != nil {
				return err
			}
			continue
		}
		if err := addFile(tw, nm, e.src); err != nil {
			return err
		}
	}
	return tw.Close()
}

func addFile(tw *tar.Writer, nm, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", src)
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: nm, Size: fi.Size(), Mode: int64(fi.Mode().Perm())}); err != nil {
		return err
	}
	if _, err := io.Copy(tw, f); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}

// The Go peer of `make bench`: `go_peer FILE PORT` serves FILE at /file with Go's net/http.
//
// It is what a Go user writes to serve a file: http.ServeFile, which answers ranges,
// conditionals and HEAD through http.ServeContent and sends bodies with sendfile(2).
// net/http keeps no access log. The bench sets GOMAXPROCS=1 and pins the process to
// the servers' CPU, like the other peers.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: go_peer FILE PORT")
		os.Exit(2)
	}
	path, port := os.Args[1], os.Args[2]
	http.HandleFunc("/file", func(w http.ResponseWriter, r *http.Request) {
		// Set, so ServeContent does not read the file's first 512 bytes to sniff a type.
		w.Header().Set("Content-Type", "video/mp4")
		http.ServeFile(w, r, path)
	})
	log.Fatal(http.ListenAndServe("127.0.0.1:"+port, nil))
}

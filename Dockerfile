# syntax=docker/dockerfile:1
# ndlb: a static binary in an image with nothing else in it.
#   docker build -t ndlb .
#   docker run -p 9000:9000 -e NDLB_TARGET=10.0.0.5:5170,10.0.0.6:5170 ndlb
# integration/docker_test.go builds the binary with the same flags and runs
# it the way this image does (alone in an empty root, as uid 65532, with only
# NDLB_* variables), since CI has no Docker engine.

# go.mod's go directive: an older image would fetch that toolchain first.
FROM golang:1.26.8 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.buildVersion=${VERSION}" -o /out/ndlb ./cmd/ndlb

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ndlb /ndlb
USER 65532:65532
EXPOSE 9000
ENTRYPOINT ["/ndlb"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 CMD ["/ndlb", "healthcheck"]

# Multi-stage build of a static, non-root console-apiserver image.
FROM node:20-bookworm-slim AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/ ./
RUN npm run build

FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
COPY --from=web /src/web/dist/ web/dist/
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /console-apiserver ./cmd/console-apiserver

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /console-apiserver /console-apiserver
USER 65532:65532
ENTRYPOINT ["/console-apiserver"]

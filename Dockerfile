FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY pipeline ./pipeline
RUN pip install --no-cache-dir .
USER 65534
ENTRYPOINT ["modstream"]

using Microsoft.ML.Lora;

namespace Microsoft.ML;

/// <summary>
/// Saving an ML.NET model file so that a failed, cancelled or concurrent save never leaves a partial file:
/// <c>mlContext.Model.SaveAtomic(model, schema, path)</c>.
/// </summary>
/// <remarks>
/// ML.NET's <c>mlContext.Model.Save(model, schema, path)</c> creates (truncates) the file first and then writes the zip into
/// it, so a write that fails midway (full disk, an exception in a transformer, a killed process) leaves a damaged file where
/// the old model was, and two processes saving one path at once can interleave. <see cref="SaveAtomic"/> writes the same
/// bytes to a temporary file in the target's folder and moves it over the target only when complete: readers see the old
/// file or the new one, never a mix, and on failure the old file is unchanged and the temporary file removed.
/// </remarks>
public static class LoraModelSaving
{
    /// <summary>
    /// Saves <paramref name="model"/> with its input schema to <paramref name="filePath"/> as ML.NET's <c>Save</c> does, but
    /// through a temporary file in the same folder that replaces the target only when the whole model is written.
    /// </summary>
    /// <param name="catalog">The model operations catalog (<c>mlContext.Model</c>).</param>
    /// <param name="model">The model to save (any <see cref="ITransformer"/>, not only LoRA models).</param>
    /// <param name="inputSchema">The schema of the model's input, as for ML.NET's <c>Save</c>.</param>
    /// <param name="filePath">The model file to create or replace. Its folder is created if missing.</param>
    /// <param name="cancellationToken">Checked before writing, at every write to the file and before the move; when it is
    /// cancelled the target is left as it was.</param>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled; nothing was replaced.</exception>
    /// <exception cref="IOException">The file could not be written (e.g. the disk is full); the target is unchanged.</exception>
    public static void SaveAtomic(this ModelOperationsCatalog catalog, ITransformer model, DataViewSchema inputSchema, string filePath,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrEmpty(filePath);
        cancellationToken.ThrowIfCancellationRequested();
        AtomicFile.Write(filePath, stream =>
        {
            using (var checkedStream = new CancellableWriteStream(stream, cancellationToken))
            {
                catalog.Save(model, inputSchema, checkedStream);
            }

            cancellationToken.ThrowIfCancellationRequested();
        });
    }

    /// <summary>A write-only pass-through that throws once the token is cancelled; leaves the inner stream open.</summary>
    private sealed class CancellableWriteStream(Stream inner, CancellationToken token) : Stream
    {
        public override bool CanRead => false;

        public override bool CanSeek => inner.CanSeek;

        public override bool CanWrite => true;

        public override long Length => inner.Length;

        public override long Position
        {
            get => inner.Position;
            set => inner.Position = value;
        }

        public override void Flush() => inner.Flush();

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        public override long Seek(long offset, SeekOrigin origin) => inner.Seek(offset, origin);

        public override void SetLength(long value) => inner.SetLength(value);

        public override void Write(byte[] buffer, int offset, int count)
        {
            token.ThrowIfCancellationRequested();
            inner.Write(buffer, offset, count);
        }

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            token.ThrowIfCancellationRequested();
            inner.Write(buffer);
        }

        public override void WriteByte(byte value)
        {
            token.ThrowIfCancellationRequested();
            inner.WriteByte(value);
        }
    }
}

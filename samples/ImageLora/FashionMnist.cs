using System.Buffers.Binary;
using System.IO.Compression;

namespace ImageLora;

/// <summary>
/// Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; MIT licence) in its own IDX format, gzip-compressed: 28×28 grey images
/// (one byte per pixel, row-major, 0 = background) and one label byte (0–9) per image. Reads the full files of the Debian
/// package <c>dataset-fashion-mnist</c> (<c>/usr/share/datasets/fashion-mnist</c>) and the subset committed under
/// <c>data/</c>, which has the same format and file names; writes that subset (<c>--make-subset</c>).
/// </summary>
internal static class FashionMnist
{
    /// <summary>Image side in pixels.</summary>
    public const int Side = 28;

    /// <summary>Pixels per image.</summary>
    public const int Pixels = Side * Side;

    /// <summary>Class names, in label order (the dataset's README).</summary>
    public static readonly string[] ClassNames =
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

    /// <summary>Images in the full training file.</summary>
    public const int FullTrainCount = 60_000;

    /// <summary>Seed of the shuffle that orders the committed training subset.</summary>
    public const int SubsetSeed = 2017;

    private const int ImagesMagic = 0x00000803;
    private const int LabelsMagic = 0x00000801;

    /// <summary>Reads <c>{prefix}-images-idx3-ubyte.gz</c> and <c>{prefix}-labels-idx1-ubyte.gz</c> (prefix <c>train</c> or <c>t10k</c>).</summary>
    /// <param name="directory">The folder holding the files.</param>
    /// <param name="prefix"><c>train</c> or <c>t10k</c>.</param>
    /// <returns>The images and labels.</returns>
    /// <exception cref="FileNotFoundException">A file is missing.</exception>
    /// <exception cref="InvalidDataException">A file is not IDX of the expected kind, or the counts differ.</exception>
    public static LabelledImages Read(string directory, string prefix)
    {
        string imagesPath = Path.Combine(directory, $"{prefix}-images-idx3-ubyte.gz");
        string labelsPath = Path.Combine(directory, $"{prefix}-labels-idx1-ubyte.gz");
        byte[] images = ReadGzip(imagesPath);
        int count = CheckHeader(images, imagesPath, ImagesMagic, 16);
        int rows = BinaryPrimitives.ReadInt32BigEndian(images.AsSpan(8));
        int columns = BinaryPrimitives.ReadInt32BigEndian(images.AsSpan(12));
        if (rows != Side || columns != Side || images.Length != 16 + (long)count * Pixels)
        {
            throw new InvalidDataException($"{imagesPath}: expected {count} images of {Side}×{Side} bytes after a 16-byte header, got {rows}×{columns} and {images.Length} bytes.");
        }

        byte[] labels = ReadGzip(labelsPath);
        int labelCount = CheckHeader(labels, labelsPath, LabelsMagic, 8);
        if (labelCount != count || labels.Length != 8 + count)
        {
            throw new InvalidDataException($"{labelsPath}: expected {count} labels (one per image of {imagesPath}), got {labelCount} in {labels.Length} bytes.");
        }

        var result = new LabelledImages(new byte[count][], new int[count]);
        for (int i = 0; i < count; i++)
        {
            result.Images[i] = images.AsSpan(16 + i * Pixels, Pixels).ToArray();
            int label = labels[8 + i];
            if (label >= ClassNames.Length)
            {
                throw new InvalidDataException($"{labelsPath}: label {label} of image {i} is not a class (0–{ClassNames.Length - 1}).");
            }

            result.Labels[i] = label;
        }

        return result;
    }

    /// <summary>The seeded shuffle (<see cref="SubsetSeed"/>) of the row indices of a training file of <paramref name="count"/> rows.</summary>
    public static int[] SubsetOrder(int count)
    {
        int[] order = [.. Enumerable.Range(0, count)];
        new Random(SubsetSeed).Shuffle(order);
        return order;
    }

    /// <summary>
    /// Writes the committed subset: the first <paramref name="trainCount"/> training images of the seeded shuffle
    /// <see cref="SubsetOrder"/> of the 60,000 (in that order), and the first <paramref name="testCount"/> test images.
    /// </summary>
    /// <param name="sourceDirectory">The full dataset (the Debian package's folder).</param>
    /// <param name="targetDirectory">Where to write the four .gz files.</param>
    /// <param name="trainCount">Training images to keep.</param>
    /// <param name="testCount">Test images to keep (the first ones).</param>
    public static void WriteSubset(string sourceDirectory, string targetDirectory, int trainCount, int testCount)
    {
        var train = Read(sourceDirectory, "train");
        var test = Read(sourceDirectory, "t10k");
        if (train.Count != FullTrainCount)
        {
            throw new ArgumentException($"{sourceDirectory} holds {train.Count} training images; the subset is drawn from the full {FullTrainCount}.", nameof(sourceDirectory));
        }

        ArgumentOutOfRangeException.ThrowIfGreaterThan(trainCount, train.Count);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(testCount, test.Count);
        Directory.CreateDirectory(targetDirectory);
        Write(targetDirectory, "train", train.Select(SubsetOrder(train.Count).Take(trainCount)));
        Write(targetDirectory, "t10k", test.Select(Enumerable.Range(0, testCount)));
    }

    private static void Write(string directory, string prefix, LabelledImages set)
    {
        var images = new byte[16 + set.Count * Pixels];
        BinaryPrimitives.WriteInt32BigEndian(images, ImagesMagic);
        BinaryPrimitives.WriteInt32BigEndian(images.AsSpan(4), set.Count);
        BinaryPrimitives.WriteInt32BigEndian(images.AsSpan(8), Side);
        BinaryPrimitives.WriteInt32BigEndian(images.AsSpan(12), Side);
        var labels = new byte[8 + set.Count];
        BinaryPrimitives.WriteInt32BigEndian(labels, LabelsMagic);
        BinaryPrimitives.WriteInt32BigEndian(labels.AsSpan(4), set.Count);
        for (int i = 0; i < set.Count; i++)
        {
            set.Images[i].CopyTo(images, 16 + i * Pixels);
            labels[8 + i] = (byte)set.Labels[i];
        }

        WriteGzip(Path.Combine(directory, $"{prefix}-images-idx3-ubyte.gz"), images);
        WriteGzip(Path.Combine(directory, $"{prefix}-labels-idx1-ubyte.gz"), labels);
    }

    private static int CheckHeader(byte[] bytes, string path, int magic, int headerLength)
    {
        if (bytes.Length < headerLength || BinaryPrimitives.ReadInt32BigEndian(bytes) != magic)
        {
            throw new InvalidDataException($"{path} is not an IDX file of {(magic == ImagesMagic ? "images (magic 0x803)" : "labels (magic 0x801)")}.");
        }

        return BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(4));
    }

    private static byte[] ReadGzip(string path)
    {
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"Fashion-MNIST file '{path}' does not exist (see data/README.md).", path);
        }

        using var file = File.OpenRead(path);
        using var gzip = new GZipStream(file, CompressionMode.Decompress);
        using var memory = new MemoryStream();
        gzip.CopyTo(memory);
        return memory.ToArray();
    }

    /// <summary>Writes to a temporary file first, then moves it into place.</summary>
    private static void WriteGzip(string path, byte[] bytes)
    {
        string tmp = path + ".tmp";
        using (var file = File.Create(tmp))
        using (var gzip = new GZipStream(file, CompressionLevel.SmallestSize))
        {
            gzip.Write(bytes);
        }

        File.Move(tmp, path, overwrite: true);
    }
}

/// <summary>Grey 28×28 images (784 bytes each) with their class labels (0–9).</summary>
internal sealed record LabelledImages(byte[][] Images, int[] Labels)
{
    public int Count => Labels.Length;

    /// <summary>The rows at <paramref name="indices"/>, in that order (the arrays are shared, not copied).</summary>
    public LabelledImages Select(IEnumerable<int> indices)
    {
        int[] rows = [.. indices];
        return new LabelledImages([.. rows.Select(i => Images[i])], [.. rows.Select(i => Labels[i])]);
    }

    /// <summary>The first <paramref name="count"/> rows (all of them when there are fewer).</summary>
    public LabelledImages Take(int count) => Select(Enumerable.Range(0, Math.Min(count, Count)));
}
